"""DPO rounds as Kubeflow Trainer TrainJobs (trainingJob.launcher=trainjob) against the real
test kube-apiserver with Kubeflow Trainer v2.0.0's own CRDs installed
(deploy/kubeflow/fetch-crds.sh): the chart's TrainJob passes the CRD's schema (and a wrong one
does not), and the controller creates, follows and deletes the round's TrainJob with its
ServiceAccount's token, within its Role.

No Kubeflow controller runs: the tests play it by writing the TrainJob's conditions through
its status subresource, as the Job tests play the Job controller.
"""

from __future__ import annotations

import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from srlm.controller.kube import (TRAINER_GROUP, TRAINER_VERSION, TRAINJOB_PLURAL, JobFailed, KubeError,
                                  KubeOrchestrator, api_client, permissions, render_trainjob)
from tests.fixtures.kube import CACHE, assert_schema_rejects, helm_env, install_crds, when_served

REPO = Path(__file__).resolve().parents[2]
CRDS = CACHE / "crds" / "kubeflow-trainer-v2.0.0"
NAMESPACE = "srlm-trainjob"
CONTROLLER_SA = "t-srlm-controller"
ROUND_ARGS = ["--run-id", "run-1", "--iteration", "1", "--base-version", "m1", "--out-version", "m2"]


@pytest.fixture(scope="module")
def admin(kube_cluster):
    return kube_cluster.admin_client()


@pytest.fixture(scope="module")
def crds(admin):
    """Kubeflow Trainer's CRDs and its torch-distributed ClusterTrainingRuntime, installed."""
    install_crds(admin, CRDS, TRAINER_GROUP, ("trainjobs", "clustertrainingruntimes"), "deploy/kubeflow/fetch-crds.sh")
    runtime = yaml.safe_load((CRDS / "torch_distributed.yaml").read_text())

    def create_runtime():
        try:
            client.CustomObjectsApi(admin).create_cluster_custom_object(
                TRAINER_GROUP, TRAINER_VERSION, "clustertrainingruntimes", runtime)
        except ApiException as err:
            if err.status != 409:
                raise

    when_served(create_runtime)
    return admin


@pytest.fixture(scope="module")
def release(crds, kube_cluster, helm_bin, tmp_path_factory):
    """The chart with launcher=trainjob (2 nodes of 8 GPUs), installed into NAMESPACE."""
    env = helm_env(tmp_path_factory)
    proc = subprocess.run(
        [str(helm_bin), "install", "t", str(REPO / "helm" / "srlm"), "--kubeconfig", str(kube_cluster.kubeconfig),
         "-n", NAMESPACE, "--create-namespace", "-f", str(REPO / "tests" / "helm" / "values" / "gpu-pools.yaml"),
         "--set", "trainingJob.launcher=trainjob,trainingJob.nodes=2"],
        capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def kube_config(release, admin, kube_cluster, tmp_path_factory):
    """The installed srlm config's kubernetes section, with the controller ServiceAccount's token."""
    kube = kube_cluster.controller_config(admin, NAMESPACE, CONTROLLER_SA, tmp_path_factory.mktemp("sa"),
                                          job_timeout_s=20.0)
    assert kube.training_launcher == "trainjob"  # the chart sets it with the template
    return kube


@pytest.fixture(scope="module")
def orchestrator(kube_config):
    return KubeOrchestrator.from_config(kube_config)


def chart_trainjob(admin) -> dict:
    cm = client.CoreV1Api(admin).read_namespaced_config_map("t-srlm-dpo-job", NAMESPACE)
    return yaml.safe_load(cm.data["job.yaml"])


def custom(api) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def create_dry_run(admin, obj: dict) -> None:
    """Server-side dry run with strict field validation: an unknown or mistyped field fails."""
    custom(admin).create_namespaced_custom_object(TRAINER_GROUP, TRAINER_VERSION, NAMESPACE, TRAINJOB_PLURAL, obj,
                                                  dry_run="All", field_validation="Strict")


def get_trainjob(admin, name: str) -> dict:
    return custom(admin).get_namespaced_custom_object(TRAINER_GROUP, TRAINER_VERSION, NAMESPACE, TRAINJOB_PLURAL, name)


def finish_trainjob(admin, name: str, succeeded: bool) -> None:
    """Play Kubeflow's TrainJob controller: its terminal condition, through the status subresource."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    cond = ({"type": "Complete", "status": "True", "reason": "JobSetCompleted", "message": "jobset completed"}
            if succeeded else
            {"type": "Failed", "status": "True", "reason": "JobSetFailed", "message": "jobset failed: node-0 failed"})
    custom(admin).patch_namespaced_custom_object_status(
        TRAINER_GROUP, TRAINER_VERSION, NAMESPACE, TRAINJOB_PLURAL, name,
        {"status": {"conditions": [{**cond, "lastTransitionTime": now}]}},
        _content_type="application/merge-patch+json")


# --------------------------------------------------------------------------- the CRD's schema


def test_the_charts_trainjob_passes_the_crd(crds, admin, release):
    template = chart_trainjob(admin)
    runtime = template["spec"]["runtimeRef"]
    assert (runtime["apiGroup"], runtime["kind"]) == (TRAINER_GROUP, "ClusterTrainingRuntime")
    # the runtime it names is Kubeflow's own torch-distributed, installed above
    assert custom(admin).get_cluster_custom_object(TRAINER_GROUP, TRAINER_VERSION, "clustertrainingruntimes",
                                                   runtime["name"])["metadata"]["name"] == "torch-distributed"
    create_dry_run(admin, template)
    create_dry_run(admin, render_trainjob(template, name="t-srlm-dpo-r-1", run_id="r", iteration=1,
                                          base_version="m0", out_version="m1", owner=None))


@pytest.mark.parametrize("path, value", [
    (("spec", "trainer", "numGpus"), 8),                     # unknown field
    (("spec", "trainer", "numNodes"), "two"),                # not an integer
    (("spec", "trainer", "env"), {"PET_NNODES": "2"}),      # not a list of EnvVar
    (("spec", "runtimeRef", "name"), None),                  # required
    (("spec", "podSpecOverrides", 0, "securityContext"), {}),  # not overridable in v2.0.0
])
def test_the_crd_rejects_a_wrong_trainjob(crds, admin, release, path, value):
    assert_schema_rejects(lambda obj: create_dry_run(admin, obj), chart_trainjob(admin), path, value)


# --------------------------------------------------------------------------- the controller


def test_trainjob_lifecycle(orchestrator, admin):
    name = orchestrator.create_training_job("run-1", 1, "m1", "m2")
    assert name == "t-srlm-dpo-run-1-1"
    tj = get_trainjob(admin, name)
    owner = client.AppsV1Api(admin).read_namespaced_deployment("t-srlm-controller", NAMESPACE)
    (ref,) = tj["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"]) == ("Deployment", "t-srlm-controller", owner.metadata.uid)
    trainer = tj["spec"]["trainer"]
    assert trainer["args"] == ["train", "dpo", *ROUND_ARGS]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 8)
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    assert tj["spec"]["labels"]["srlm.dev/run-id"] == "run-1"  # to its JobSet and Jobs
    assert tj["spec"]["runtimeRef"]["name"] == "torch-distributed"
    # A restarted controller asking again follows the same TrainJob.
    assert orchestrator.create_training_job("run-1", 1, "m1", "m2") == name
    with pytest.raises(KubeError, match="already exists"):
        orchestrator.create_training_job("run-1", 1, "m1", "other")

    with pytest.raises(TimeoutError):
        orchestrator.wait_job(name, timeout_s=0.3)  # no condition yet
    finish_trainjob(admin, name, succeeded=True)
    assert get_trainjob(admin, name)["status"]["conditions"][0]["type"] == "Complete"
    orchestrator.run_training_job("run-1", 1, "m1", "m2")  # follows it, then deletes it
    with pytest.raises(ApiException) as gone:
        get_trainjob(admin, name)
    assert gone.value.status == 404
    orchestrator.delete_job(name)  # already gone: fine


def test_failed_trainjob_is_reported_and_kept(orchestrator, admin):
    name = orchestrator.create_training_job("run-1", 2, "m2", "m3")
    finish_trainjob(admin, name, succeeded=False)
    with pytest.raises(JobFailed, match="JobSetFailed: jobset failed"):
        orchestrator.run_training_job("run-1", 2, "m2", "m3")
    assert get_trainjob(admin, name)["metadata"]["name"] == name


def test_a_template_of_the_other_kind_is_refused(kube_config):
    wrong = KubeOrchestrator.from_config(kube_config.model_copy(update={"training_launcher": "job"}))
    with pytest.raises(KubeError, match="is a TrainJob, but kubernetes.training_launcher is 'job'"):
        wrong.create_training_job("run-x", 1, "m1", "m2")


def test_actions_outside_the_role_are_denied(kube_config, crds):
    sa = api_client(kube_config)  # the controller's ServiceAccount token
    batch, cust = client.BatchV1Api(sa), client.CustomObjectsApi(sa)
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"}, "spec": {"template": {"spec": {
        "restartPolicy": "Never", "containers": [{"name": "x", "image": "x"}]}}}}
    tj = {"apiVersion": f"{TRAINER_GROUP}/{TRAINER_VERSION}", "kind": "TrainJob", "metadata": {"name": "x"},
          "spec": {"runtimeRef": {"name": "torch-distributed"}}}
    denied = [
        lambda: batch.create_namespaced_job(NAMESPACE, job),   # with launcher trainjob: no Jobs
        lambda: batch.read_namespaced_job("x", NAMESPACE),
        lambda: cust.list_namespaced_custom_object(TRAINER_GROUP, TRAINER_VERSION, NAMESPACE, TRAINJOB_PLURAL),
        lambda: cust.patch_namespaced_custom_object(TRAINER_GROUP, TRAINER_VERSION, NAMESPACE, TRAINJOB_PLURAL, "x",
                                                    {"metadata": {"labels": {"x": "y"}}}),
        lambda: cust.create_namespaced_custom_object(TRAINER_GROUP, TRAINER_VERSION, "default", TRAINJOB_PLURAL, tj),
        lambda: cust.patch_namespaced_custom_object_status(TRAINER_GROUP, TRAINER_VERSION, NAMESPACE,
                                                           TRAINJOB_PLURAL, "x", {"status": {}}),
    ]
    for i, action in enumerate(denied):
        with pytest.raises(ApiException) as err:
            action()
        assert err.value.status == 403, (i, err.value)
    # Through the orchestrator, a denied call names what the Role does grant.
    wrong = KubeOrchestrator.from_config(kube_config.model_copy(update={"job_template_configmap": "t-srlm-config"}))
    with pytest.raises(KubeError, match=r"forbidden by RBAC .*create/delete/get trainer.kubeflow.org/trainjobs"):
        wrong.create_training_job("run-x", 1, "m1", "m2")


def test_the_controller_used_only_what_its_role_grants(orchestrator, admin, kube_cluster):
    """From the API server's audit log: the requests of this release's controller fall in the
    trainjob Role, and a round used every TrainJob permission (and no batch/jobs)."""
    name = orchestrator.create_training_job("run-audit", 1, "m2", "m3")
    finish_trainjob(admin, name, succeeded=True)
    orchestrator.run_training_job("run-audit", 1, "m2", "m3")
    user = f"system:serviceaccount:{NAMESPACE}:{CONTROLLER_SA}"
    used = kube_cluster.granted_requests(user)
    granted = permissions("trainjob")
    assert used[(TRAINER_GROUP, TRAINJOB_PLURAL)] == {"create", "get", "delete"}
    assert ("batch", "jobs") not in used
    for key, verbs in used.items():
        assert key in granted and verbs <= granted[key], (key, verbs)
