"""The controller's Kubernetes mode against a real API server (etcd + kube-apiserver on
loopback, RBAC on), with the chart installed by the real helm (2-node DPO rounds: Indexed Jobs
with a headless Service) and the controller acting with its ServiceAccount's token.

No kubelet or controller-manager runs, so no pod ever starts: the tests play the Job
controller and the Deployment controller by writing Job and Deployment status through the
status subresource (as the admin), and the controller under test reads it as it would in a
cluster.
"""

from __future__ import annotations

import subprocess
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from srlm.controller.kube import (FIELD_MANAGER, MODEL_VERSION_ANNOTATION, JobFailed, KubeError,
                                  KubeOrchestrator, KubePromoter, KubeTrainerLauncher, RolloutFailed,
                                  api_client, model_version, permissions)
from srlm.v1 import records_pb2
from tests.fixtures.kube import helm_env

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "srlm-kube"
RELEASE = "t"
CONTROLLER_SA = "t-srlm-controller"
INFERENCE = [f"t-srlm-{n}" for n in ("promptgen", "sampler", "judge")]
BROKEN = "m-broken"        # pods of this version never become available (timeout -> rollback)
DEADLINE = "m-deadline"    # this version's rollout exceeds its progress deadline (-> rollback)


@pytest.fixture(scope="module")
def admin(kube_cluster):
    return kube_cluster.admin_client()


@pytest.fixture(scope="module")
def release(kube_cluster, helm_bin, tmp_path_factory):
    """The chart installed into NAMESPACE with the GPU-pool values (8 GPUs per node), 2-node DPO
    rounds and model version m1."""
    env = helm_env(tmp_path_factory)
    proc = subprocess.run(
        [str(helm_bin), "install", RELEASE, str(REPO / "helm" / "srlm"), "--kubeconfig", str(kube_cluster.kubeconfig),
         "-n", NAMESPACE, "--create-namespace", "-f", str(REPO / "tests" / "helm" / "values" / "gpu-pools.yaml"),
         "--set", "model.version=m1", "--set", "trainingJob.nodes=2"],
        capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def kube_config(release, admin, kube_cluster, tmp_path_factory):
    """The installed srlm config's kubernetes section, pointed at the test API server with a
    token of the chart's controller ServiceAccount."""
    return kube_cluster.controller_config(admin, NAMESPACE, CONTROLLER_SA, tmp_path_factory.mktemp("sa"),
                                          rollout_timeout_s=20.0, job_timeout_s=20.0)


@pytest.fixture(scope="module")
def orchestrator(kube_config):
    return KubeOrchestrator.from_config(kube_config)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def finish_job(admin, name: str, succeeded: bool, nodes: int = 2, namespace: str = NAMESPACE) -> None:
    """Play the Job controller: mark the (Indexed, ``nodes``-pod) Job finished through its
    status subresource."""
    now = _now()
    if succeeded:
        status = {"startTime": now, "completionTime": now, "succeeded": nodes,
                  "completedIndexes": "0" if nodes == 1 else f"0-{nodes - 1}", "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
             "lastTransitionTime": now, "lastProbeTime": now},
            {"type": "Complete", "status": "True", "reason": "CompletionsReached",
             "lastTransitionTime": now, "lastProbeTime": now}]}
    else:
        status = {"startTime": now, "failed": 1, "conditions": [
            {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded",
             "message": "Job has reached the specified backoff limit", "lastTransitionTime": now, "lastProbeTime": now},
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
             "message": "Job has reached the specified backoff limit", "lastTransitionTime": now, "lastProbeTime": now}]}
    client.BatchV1Api(admin).patch_namespaced_job_status(name, namespace, {"status": status},
                                                        _content_type="application/merge-patch+json")


class RolloutDriver(threading.Thread):
    """Play the Deployment controller for the inference Deployments: when a new spec appears,
    report it rolled out, except for BROKEN (pods never available) and DEADLINE (progress
    deadline exceeded)."""

    def __init__(self, admin):
        super().__init__(daemon=True)
        self.apps = client.AppsV1Api(admin)
        self.stop = threading.Event()
        self.error: Exception | None = None

    def run(self):
        try:
            while not self.stop.wait(0.1):
                for name in INFERENCE:
                    self._observe(self.apps.read_namespaced_deployment(name, NAMESPACE))
        except Exception as err:  # surfaced by the test
            self.error = err

    def _observe(self, dep):
        if (dep.status.observed_generation or 0) >= dep.metadata.generation:
            return
        version = model_version(client.ApiClient().sanitize_for_serialization(dep))
        replicas = dep.spec.replicas
        available = 0 if version in (BROKEN, DEADLINE) else replicas
        status = {"observedGeneration": dep.metadata.generation, "replicas": replicas, "updatedReplicas": replicas,
                  "readyReplicas": available, "availableReplicas": available}
        if version == DEADLINE:
            now = _now()
            status["conditions"] = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                     "message": f"ReplicaSet of {dep.metadata.name} has timed out progressing.",
                                     "lastUpdateTime": now, "lastTransitionTime": now}]
        else:
            status["conditions"] = None
        self.apps.patch_namespaced_deployment_status(dep.metadata.name, NAMESPACE, {"status": status},
                                                     _content_type="application/merge-patch+json")


@pytest.fixture
def rollouts(admin):
    driver = RolloutDriver(admin)
    driver.start()
    yield driver
    driver.stop.set()
    driver.join(timeout=5)
    assert driver.error is None, driver.error


def versions(admin) -> dict[str, str | None]:
    apps = client.AppsV1Api(admin)
    out = {}
    for name in INFERENCE:
        dep = apps.read_namespaced_deployment(name, NAMESPACE)
        out[name] = model_version(client.ApiClient().sanitize_for_serialization(dep))
        assert dep.spec.template.metadata.annotations.get(MODEL_VERSION_ANNOTATION) == out[name]
    return out


# --------------------------------------------------------------------------- training Jobs


def test_training_job_lifecycle(orchestrator, admin):
    batch, apps = client.BatchV1Api(admin), client.AppsV1Api(admin)
    name = orchestrator.create_training_job("run-1", 1, "m1", "m2")
    assert name == "t-srlm-dpo-run-1-1"
    job = batch.read_namespaced_job(name, NAMESPACE)
    owner = apps.read_namespaced_deployment("t-srlm-controller", NAMESPACE)
    (ref,) = job.metadata.owner_references
    assert (ref.kind, ref.name, ref.uid) == ("Deployment", "t-srlm-controller", owner.metadata.uid)
    pod = job.spec.template.spec
    (container,) = pod.containers
    assert container.args == ["train", "dpo", "--run-id", "run-1", "--iteration", "1",
                              "--base-version", "m1", "--out-version", "m2"]
    assert container.resources.limits["nvidia.com/gpu"] == "8"
    assert pod.node_selector == {"cloud.google.com/gke-nodepool": "gpu-training"}  # the training pool
    # A restarted controller asking again follows the same Job.
    assert orchestrator.create_training_job("run-1", 1, "m1", "m2") == name
    with pytest.raises(KubeError, match="already exists"):
        orchestrator.create_training_job("run-1", 1, "m1", "other")

    with pytest.raises(TimeoutError):
        orchestrator.wait_job(name, timeout_s=0.3)  # nothing has finished it yet
    finish_job(admin, name, succeeded=True)
    orchestrator.wait_job(name)
    orchestrator.delete_job(name)
    with pytest.raises(ApiException) as gone:
        batch.read_namespaced_job(name, NAMESPACE)
    assert gone.value.status == 404
    orchestrator.delete_job(name)  # already gone: fine


def test_two_node_round_is_an_indexed_job(orchestrator, admin):
    """A 2-node DPO round: one Indexed Job whose pods find rank 0 through the chart's headless
    Service; the Job controller's verdict (written here) ends it and the controller deletes it."""
    batch, core = client.BatchV1Api(admin), client.CoreV1Api(admin)
    name = orchestrator.create_training_job("run-2n", 1, "m1", "m2")
    job = client.ApiClient().sanitize_for_serialization(batch.read_namespaced_job(name, NAMESPACE))
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert spec["podFailurePolicy"]["rules"][0]["action"] == "FailJob"
    svc = core.read_namespaced_service(pod["subdomain"], NAMESPACE)  # installed by the chart
    assert svc.spec.cluster_ip == "None" and svc.spec.publish_not_ready_addresses
    assert svc.spec.selector.items() <= spec["template"]["metadata"]["labels"].items()
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["PET_MASTER_ADDR"]["value"] == f"{name}-0.{pod['subdomain']}"  # pod 0's hostname . subdomain
    assert (env["PET_NNODES"]["value"], env["PET_NPROC_PER_NODE"]["value"]) == ("2", "8")
    assert env["PET_MASTER_PORT"]["value"] == str(svc.spec.ports[0].port)
    assert env["PET_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert container["args"][-8:] == ["--run-id", "run-2n", "--iteration", "1", "--base-version", "m1",
                                      "--out-version", "m2"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert {"name": "dshm", "mountPath": "/dev/shm"}.items() <= next(
        m for m in container["volumeMounts"] if m["name"] == "dshm").items()

    errors: list[Exception] = []

    def run_round():
        try:
            orchestrator.run_training_job("run-2n", 1, "m1", "m2")  # follows the existing Job of the round
        except Exception as err:  # surfaced below
            errors.append(err)

    done = threading.Thread(target=run_round, daemon=True)
    done.start()
    time.sleep(0.5)
    assert done.is_alive() and not errors  # still running: nothing has finished it
    finish_job(admin, name, succeeded=True)
    done.join(timeout=10)
    assert not done.is_alive() and not errors, errors
    with pytest.raises(ApiException) as gone:
        batch.read_namespaced_job(name, NAMESPACE)
    assert gone.value.status == 404


def test_failed_training_job_is_reported_and_kept(orchestrator, admin):
    name = orchestrator.create_training_job("run-1", 2, "m2", "m3")
    finish_job(admin, name, succeeded=False)
    with pytest.raises(JobFailed, match="BackoffLimitExceeded"):
        orchestrator.run_training_job("run-1", 2, "m2", "m3")
    assert client.BatchV1Api(admin).read_namespaced_job(name, NAMESPACE).metadata.name == name


# --------------------------------------------------------------------------- promotions


def test_promotion_rolls_out_the_inference_deployments(orchestrator, admin, rollouts):
    assert versions(admin) == dict.fromkeys(INFERENCE, "m1")
    generations = {n: client.AppsV1Api(admin).read_namespaced_deployment(n, NAMESPACE).metadata.generation
                   for n in INFERENCE}
    assert orchestrator.set_inference_version("m2") == dict.fromkeys(INFERENCE, "m1")
    assert versions(admin) == dict.fromkeys(INFERENCE, "m2")
    for name in INFERENCE:
        dep = client.AppsV1Api(admin).read_namespaced_deployment(name, NAMESPACE)
        assert dep.metadata.generation == generations[name] + 1  # the pod template changed: a rollout
        assert any(f.manager == FIELD_MANAGER for f in dep.metadata.managed_fields)
    # the trainer is not an inference service: untouched
    trainer = client.AppsV1Api(admin).read_namespaced_deployment("t-srlm-trainer", NAMESPACE)
    assert model_version(client.ApiClient().sanitize_for_serialization(trainer)) is None


@pytest.mark.parametrize("bad, reason", [(BROKEN, "not complete after"), (DEADLINE, "timed out progressing")])
def test_failed_rollout_rolls_back(orchestrator, admin, rollouts, bad, reason):
    before = versions(admin)
    assert set(before.values()) == {"m2"}
    with pytest.raises(RolloutFailed, match=reason) as failed:
        orchestrator.set_inference_version(bad, timeout_s=2.0)
    assert failed.value.rolled_back and failed.value.version == bad
    assert versions(admin) == before


# --------------------------------------------------------------------------- least privilege


def test_actions_outside_the_role_are_denied(kube_config):
    sa = api_client(kube_config)  # the controller's ServiceAccount token
    core, apps, batch = client.CoreV1Api(sa), client.AppsV1Api(sa), client.BatchV1Api(sa)
    denied = [
        lambda: core.list_namespaced_secret(NAMESPACE),
        lambda: core.read_namespaced_config_map("t-srlm-config", NAMESPACE),      # only the Job template
        lambda: apps.patch_namespaced_deployment("t-srlm-trainer", NAMESPACE, {"metadata": {"labels": {"x": "y"}}}),
        lambda: apps.patch_namespaced_deployment("t-srlm-controller", NAMESPACE, {"metadata": {"labels": {"x": "y"}}}),
        lambda: apps.delete_namespaced_deployment("t-srlm-sampler", NAMESPACE),
        lambda: apps.list_namespaced_deployment(NAMESPACE),
        lambda: batch.list_namespaced_job(NAMESPACE),
        lambda: batch.create_namespaced_job("default", {  # Jobs, but in another namespace
            "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"}, "spec": {"template": {"spec": {
                "restartPolicy": "Never", "containers": [{"name": "x", "image": "x"}]}}}}),
    ]
    for i, action in enumerate(denied):
        with pytest.raises(ApiException) as err:
            action()
        assert err.value.status == 403, (i, err.value)
    # Through the orchestrator, a Deployment outside the Role is a clear error.
    wrong = KubeOrchestrator.from_config(kube_config.model_copy(
        update={"inference_deployments": ["t-srlm-promptgen", "t-srlm-trainer"]}))
    with pytest.raises(KubeError, match="forbidden by RBAC"):
        wrong.set_inference_version("m9")


def test_the_controller_used_exactly_what_its_role_grants(orchestrator, admin, rollouts, kube_cluster):
    """Every request the controller's ServiceAccount made (from the API server's audit log)
    falls in its Role, and a full cycle uses every permission the Role grants."""
    name = orchestrator.create_training_job("run-audit", 1, "m2", "m3")
    finish_job(admin, name, succeeded=True)
    orchestrator.run_training_job("run-audit", 1, "m2", "m3")
    orchestrator.set_inference_version("m3")
    user = f"system:serviceaccount:{NAMESPACE}:{CONTROLLER_SA}"
    used = kube_cluster.granted_requests(user)
    assert used == {key: set(verbs) for key, verbs in permissions("job").items()}


def test_controller_hooks_run_a_round_and_a_promotion(orchestrator, admin, rollouts):
    """What the controller's driver calls in Kubernetes mode: the launcher starts the round's
    Job and returns; its watcher deletes the Job after success or reports the failure."""
    batch = client.BatchV1Api(admin)
    failures = []
    launcher = KubeTrainerLauncher(orchestrator, on_failure=lambda cmd, err: failures.append((cmd.meta.iteration, err)))
    for iteration in (1, 2):
        cmd = records_pb2.IterationCommand(kind=records_pb2.COMMAND_KIND_TRAIN_DPO, base_version="m3",
                                           output_version=f"m4-{iteration}")
        cmd.meta.run_id, cmd.meta.iteration = "run-hooks", iteration
        launcher(cmd)
    finish_job(admin, "t-srlm-dpo-run-hooks-1", succeeded=True)
    finish_job(admin, "t-srlm-dpo-run-hooks-2", succeeded=False)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not failures:
        time.sleep(0.1)
    assert [(i, type(err)) for i, err in failures] == [(2, JobFailed)]
    while time.monotonic() < deadline:
        try:
            batch.read_namespaced_job("t-srlm-dpo-run-hooks-1", NAMESPACE)
        except ApiException as err:
            assert err.status == 404
            break
        time.sleep(0.1)
    else:
        pytest.fail("the succeeded Job was not deleted")
    assert batch.read_namespaced_job("t-srlm-dpo-run-hooks-2", NAMESPACE)  # kept for its logs
    # SFT is a round like the others: its own Job, `srlm train sft`
    sft = records_pb2.IterationCommand(kind=records_pb2.COMMAND_KIND_TRAIN_SFT, base_version="m0",
                                       output_version="m1")
    sft.meta.run_id, sft.meta.iteration = "run-hooks", 0
    launcher(sft)
    (container,) = batch.read_namespaced_job("t-srlm-dpo-run-hooks-0", NAMESPACE).spec.template.spec.containers
    assert container.args[:4] == ["train", "sft", "--run-id", "run-hooks"]
    finish_job(admin, "t-srlm-dpo-run-hooks-0", succeeded=True)
    # the eval gate is a Job too, `srlm train gate`, beside its iteration's training Job
    gate = records_pb2.IterationCommand(kind=records_pb2.COMMAND_KIND_EVAL_GATE, base_version="m3",
                                        output_version="m4-1")
    gate.meta.run_id, gate.meta.iteration = "run-hooks", 1
    launcher(gate)
    (container,) = batch.read_namespaced_job("t-srlm-dpo-gate-run-hooks-1", NAMESPACE).spec.template.spec.containers
    assert container.args == ["train", "gate", "--run-id", "run-hooks", "--iteration", "1",
                              "--base-version", "m3", "--out-version", "m4-1"]
    finish_job(admin, "t-srlm-dpo-gate-run-hooks-1", succeeded=True)
    with pytest.raises(KubeError, match="only training rounds"):
        launcher(records_pb2.IterationCommand(kind=records_pb2.COMMAND_KIND_GENERATE_PROMPTS))
    assert KubePromoter(orchestrator).promote("m4") >= 0
    assert versions(admin) == dict.fromkeys(INFERENCE, "m4")
