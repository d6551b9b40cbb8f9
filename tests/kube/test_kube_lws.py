"""Multi-node inference (the chart's inference.multiNode) against the real test kube-apiserver
with LeaderWorkerSet v0.7.0's own CRD installed (deploy/lws/fetch-crds.sh): the chart's
LeaderWorkerSets pass the CRD's schema (and wrong ones do not), and the controller, with its
ServiceAccount's token and the chart's Role, promotes a model version by patching their leader
pod template and following their rollout, and rolls back one that never completes.

No LWS controller runs (nor any pod): LwsDriver plays it by writing the LeaderWorkerSets'
status through the status subresource, as the LWS controller reports a rolling update:
UpdateInProgress with the groups not yet updated, then every group updated, ready, Available.
"""

from __future__ import annotations

import subprocess
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from srlm.controller.kube import (FIELD_MANAGER, LWS_GROUP, LWS_PLURAL, LWS_VERSION, MODEL_VERSION_ANNOTATION,
                                  MODEL_VERSION_ENV, KubeError, KubeOrchestrator, RolloutFailed, api_client,
                                  lws_version_patch, model_version, permissions)
from tests.fixtures.kube import CACHE, assert_schema_rejects, helm_env, install_crds, when_served
from tests.kube.test_kube_mode import finish_job

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "srlm"
VALUES = REPO / "tests" / "helm" / "values"
CRDS = CACHE / "crds" / "lws-v0.7.0"
NAMESPACE = "srlm-lws"
CONTROLLER_SA = "t-srlm-controller"
INFERENCE = [f"t-srlm-{n}" for n in ("promptgen", "sampler", "judge")]
# The chart's GPU-pool values (TP 2) with each engine over 2 nodes of 1 GPU, on Ray.
MULTINODE = ["-f", str(VALUES / "gpu-pools.yaml"), "--set",
             "inference.multiNode.enabled=true,config.engine.distributed_executor_backend=ray"]
BROKEN = "m-broken"  # groups of this version never become ready (timeout -> rollback)


@pytest.fixture(scope="module")
def admin(kube_cluster):
    return kube_cluster.admin_client()


def custom(api) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


@pytest.fixture(scope="module")
def crd(admin):
    """The LeaderWorkerSet CRD, installed and served."""
    install_crds(admin, CRDS, LWS_GROUP, (LWS_PLURAL,), "deploy/lws/fetch-crds.sh")
    when_served(lambda: custom(admin).list_namespaced_custom_object(LWS_GROUP, LWS_VERSION, "default", LWS_PLURAL))
    return admin


@pytest.fixture(scope="module")
def release(crd, kube_cluster, helm_bin, tmp_path_factory):
    """The chart with inference.multiNode, installed into NAMESPACE at model version m1."""
    proc = subprocess.run(
        [str(helm_bin), "install", "t", str(CHART), "--kubeconfig", str(kube_cluster.kubeconfig),
         "-n", NAMESPACE, "--create-namespace", *MULTINODE, "--set", "model.version=m1"],
        capture_output=True, text=True, timeout=180, env=helm_env(tmp_path_factory))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def kube_config(release, admin, kube_cluster, tmp_path_factory):
    """The installed srlm config's kubernetes section, with the controller ServiceAccount's token."""
    kube = kube_cluster.controller_config(admin, NAMESPACE, CONTROLLER_SA, tmp_path_factory.mktemp("sa"),
                                          rollout_timeout_s=20.0, job_timeout_s=20.0)
    assert kube.inference_leaderworkersets == INFERENCE and kube.inference_deployments == []
    return kube


@pytest.fixture(scope="module")
def orchestrator(kube_config):
    return KubeOrchestrator.from_config(kube_config)


def get_lws(api, name: str) -> dict:
    return custom(api).get_namespaced_custom_object(LWS_GROUP, LWS_VERSION, NAMESPACE, LWS_PLURAL, name)


def create_dry_run(admin, obj: dict) -> None:
    """Server-side dry run with strict field validation: an unknown or mistyped field fails."""
    custom(admin).create_namespaced_custom_object(LWS_GROUP, LWS_VERSION, NAMESPACE, LWS_PLURAL, obj,
                                                  dry_run="All", field_validation="Strict")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _conditions(**true: bool) -> list[dict]:
    reasons = {"Available": "AllGroupsReady", "Progressing": "GroupsProgressing", "UpdateInProgress": "GroupsUpdating"}
    return [{"type": t, "status": "True" if true.get(t) else "False", "reason": r, "message": f"{t} {true.get(t)}",
             "lastTransitionTime": _now()} for t, r in reasons.items()]


class LwsDriver(threading.Thread):
    """Play the LWS controller for the inference LeaderWorkerSets. A new generation (the status
    has no observedGeneration) is noticed after LATENCY s, like a reconcile that comes later than
    the controller's first poll: the status first reports the rolling update (UpdateInProgress,
    no group updated, one unavailable) for DWELL s (real groups take minutes: new pods, a model
    loaded over several nodes), then every group updated, ready and Available, except for a
    leader template at BROKEN (its groups never get ready)."""

    LATENCY, DWELL = 0.4, 0.4

    def __init__(self, admin):
        super().__init__(daemon=True)
        self.custom = custom(admin)
        self.stop = threading.Event()
        self.error: Exception | None = None
        self.rolled: dict[str, int] = {}    # name -> generation whose rollout it completed
        self.updating: dict[str, int] = {}  # name -> generation whose rollout it began
        self.noticed: dict[tuple[str, int], float] = {}

    def run(self):
        try:
            while not self.stop.wait(0.05):
                for name in INFERENCE:
                    self._observe(get_lws_admin(self.custom, name))
        except Exception as err:  # surfaced by the test
            self.error = err

    def _observe(self, lws: dict) -> None:
        name, generation = lws["metadata"]["name"], lws["metadata"]["generation"]
        if self.rolled.get(name) == generation:
            return
        if time.monotonic() - self.noticed.setdefault((name, generation), time.monotonic()) < self.LATENCY:
            return
        replicas = lws["spec"]["replicas"]
        if self.updating.get(name) != generation:
            self._status(name, {"replicas": replicas, "updatedReplicas": 0, "readyReplicas": replicas - 1,
                                "conditions": _conditions(Progressing=True, UpdateInProgress=True)})
            self.updating[name] = generation
            self.noticed[(name, generation)] = time.monotonic()
        elif time.monotonic() - self.noticed[(name, generation)] >= self.DWELL and model_version(lws) != BROKEN:
            self._status(name, {"replicas": replicas, "updatedReplicas": replicas, "readyReplicas": replicas,
                                "conditions": _conditions(Available=True)})
            self.rolled[name] = generation

    def _status(self, name: str, status: dict) -> None:
        self.custom.patch_namespaced_custom_object_status(LWS_GROUP, LWS_VERSION, NAMESPACE, LWS_PLURAL, name,
                                                          {"status": status},
                                                          _content_type="application/merge-patch+json")

    def settled(self) -> bool:
        return all(self.rolled.get(n) == get_lws_admin(self.custom, n)["metadata"]["generation"] for n in INFERENCE)


def get_lws_admin(cust: client.CustomObjectsApi, name: str) -> dict:
    return cust.get_namespaced_custom_object(LWS_GROUP, LWS_VERSION, NAMESPACE, LWS_PLURAL, name)


@pytest.fixture(scope="module")
def lws_controller(release, admin):
    """The LWS driver, once the installed LeaderWorkerSets have rolled out."""
    driver = LwsDriver(admin)
    driver.start()
    deadline = time.monotonic() + 20
    while not driver.settled():
        assert time.monotonic() < deadline and driver.error is None, driver.error
        time.sleep(0.1)
    yield driver
    driver.stop.set()
    driver.join(timeout=5)
    assert driver.error is None, driver.error


def versions(admin) -> dict[str, str | None]:
    out = {}
    for name in INFERENCE:
        lws = get_lws(admin, name)
        out[name] = model_version(lws)
        leader = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]
        assert leader["metadata"]["annotations"].get(MODEL_VERSION_ANNOTATION) == out[name]
    return out


# --------------------------------------------------------------------------- the CRD's schema


@pytest.fixture(scope="module")
def rendered(helm_bin) -> list[dict]:
    """The LeaderWorkerSets of tests/helm/values/multinode.yaml (TP 8 x PP 2 over 2 pods), of a
    release "d" (the names of the installed "t" are taken)."""
    proc = subprocess.run([str(helm_bin), "template", "d", str(CHART), "-n", NAMESPACE, "-f",
                           str(VALUES / "multinode.yaml")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lwss = [d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "LeaderWorkerSet"]
    assert len(lwss) == 3
    return lwss


def test_the_charts_leaderworkersets_pass_the_crd(crd, rendered, release):
    for lws in rendered:
        create_dry_run(crd, lws)
    # and the installed ones are what the chart rendered, defaults of the CRD filled in
    sampler = get_lws(crd, "t-srlm-sampler")
    assert sampler["spec"]["leaderWorkerTemplate"]["size"] == 2
    assert sampler["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"]["partition"] == 0  # CRD default


@pytest.mark.parametrize("path, value", [
    (("spec", "leaderWorkerTemplate", "groupSize"), 2),                        # unknown field
    (("spec", "leaderWorkerTemplate", "size"), "two"),                         # not an integer
    (("spec", "startupPolicy"), "LeaderStarted"),                               # not in the enum
    (("spec", "leaderWorkerTemplate", "restartPolicy"), "Always"),            # not in the enum
    (("spec", "leaderWorkerTemplate", "workerTemplate", "spec", "containers", 0, "gpus"), 8),  # pod schema
    (("spec", "leaderWorkerTemplate", "workerTemplate"), None),                 # required
])
def test_the_crd_rejects_a_wrong_leaderworkerset(crd, rendered, path, value):
    assert_schema_rejects(lambda obj: create_dry_run(crd, obj), rendered[0], path, value)


# --------------------------------------------------------------------------- promotions


def test_promotion_patches_the_leaders_and_waits_for_the_rollout(orchestrator, admin, lws_controller):
    assert versions(admin) == dict.fromkeys(INFERENCE, "m1")
    before = {n: get_lws(admin, n) for n in INFERENCE}
    assert orchestrator.set_inference_version("m2") == dict.fromkeys(INFERENCE, "m1")
    assert versions(admin) == dict.fromkeys(INFERENCE, "m2")
    for name in INFERENCE:
        lws = get_lws(admin, name)
        generation = lws["metadata"]["generation"]
        assert generation == before[name]["metadata"]["generation"] + 1  # the template changed: a rollout
        # It returned only after the (late) LWS controller had rolled the new template out.
        assert lws_controller.rolled[name] == generation, name
        assert any(f["manager"] == FIELD_MANAGER for f in lws["metadata"]["managedFields"])
        # The leader's env entry was replaced in place; the workers (Ray only) are untouched.
        old_leader = before[name]["spec"]["leaderWorkerTemplate"]["leaderTemplate"]
        leader = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]
        old_env, env = old_leader["spec"]["containers"][0]["env"], leader["spec"]["containers"][0]["env"]
        assert [e["name"] for e in env] == [e["name"] for e in old_env]
        assert {"name": MODEL_VERSION_ENV, "value": "m2"} in env
        assert lws["spec"]["leaderWorkerTemplate"]["workerTemplate"] == \
            before[name]["spec"]["leaderWorkerTemplate"]["workerTemplate"]
    # The same version again changes nothing: no rollout to wait for.
    start = time.monotonic()
    assert orchestrator.set_inference_version("m2") == dict.fromkeys(INFERENCE, "m2")
    assert time.monotonic() - start < 5
    assert all(get_lws(admin, n)["metadata"]["generation"] == lws_controller.rolled[n] for n in INFERENCE)


def test_a_rollout_that_never_completes_is_rolled_back(orchestrator, admin, lws_controller):
    before = versions(admin)
    assert set(before.values()) == {"m2"}
    with pytest.raises(RolloutFailed, match="not complete after .*0 of 1 groups updated") as failed:
        orchestrator.set_inference_version(BROKEN, timeout_s=2.0)
    assert failed.value.rolled_back and failed.value.version == BROKEN
    assert versions(admin) == before
    assert all(get_lws(admin, n)["metadata"]["generation"] == lws_controller.rolled[n] for n in INFERENCE)


def test_a_patch_against_a_changed_template_is_refused(admin, release):
    """The JSON patch tests the entry it edits: made from a stale read, it fails instead of
    editing whichever entry now sits at that index."""
    name = "t-srlm-judge"
    stale = get_lws(admin, name)
    shift = [{"op": "add", "path": "/spec/leaderWorkerTemplate/leaderTemplate/spec/containers/0/env/0",
              "value": {"name": "NCCL_DEBUG", "value": "WARN"}}]
    custom(admin).patch_namespaced_custom_object(LWS_GROUP, LWS_VERSION, NAMESPACE, LWS_PLURAL, name, shift,
                                                 _content_type="application/json-patch+json")
    try:
        with pytest.raises(ApiException) as err:
            custom(admin).patch_namespaced_custom_object(
                LWS_GROUP, LWS_VERSION, NAMESPACE, LWS_PLURAL, name, lws_version_patch(stale, "m9"),
                _content_type="application/json-patch+json")
        assert err.value.status == 422, err.value.body
        assert model_version(get_lws(admin, name)) != "m9"
    finally:
        custom(admin).patch_namespaced_custom_object(
            LWS_GROUP, LWS_VERSION, NAMESPACE, LWS_PLURAL, name,
            [{"op": "test", "path": "/spec/leaderWorkerTemplate/leaderTemplate/spec/containers/0/env/0/name",
              "value": "NCCL_DEBUG"},
             {"op": "remove", "path": "/spec/leaderWorkerTemplate/leaderTemplate/spec/containers/0/env/0"}],
            _content_type="application/json-patch+json")


# --------------------------------------------------------------------------- least privilege


def test_actions_outside_the_role_are_denied(kube_config, crd):
    sa = api_client(kube_config)  # the controller's ServiceAccount token
    apps, cust = client.AppsV1Api(sa), client.CustomObjectsApi(sa)
    label = {"metadata": {"labels": {"x": "y"}}}
    denied = [
        lambda: cust.list_namespaced_custom_object(LWS_GROUP, LWS_VERSION, NAMESPACE, LWS_PLURAL),
        lambda: cust.delete_namespaced_custom_object(LWS_GROUP, LWS_VERSION, NAMESPACE, LWS_PLURAL, "t-srlm-sampler"),
        lambda: cust.patch_namespaced_custom_object(LWS_GROUP, LWS_VERSION, NAMESPACE, LWS_PLURAL, "other", label),
        lambda: cust.patch_namespaced_custom_object_status(LWS_GROUP, LWS_VERSION, NAMESPACE, LWS_PLURAL,
                                                           "t-srlm-sampler", {"status": {}}),
        lambda: cust.get_namespaced_custom_object(LWS_GROUP, LWS_VERSION, "default", LWS_PLURAL, "t-srlm-sampler"),
        # with every inference service a LeaderWorkerSet, no Deployment is the controller's to patch
        lambda: apps.patch_namespaced_deployment("t-srlm-trainer", NAMESPACE, label),
        lambda: apps.patch_namespaced_deployment("t-srlm-controller", NAMESPACE, label),
    ]
    for i, action in enumerate(denied):
        with pytest.raises(ApiException) as err:
            action()
        assert err.value.status == 403, (i, err.value)
    # Through the orchestrator, a LeaderWorkerSet outside the Role names what the Role grants.
    wrong = KubeOrchestrator.from_config(kube_config.model_copy(
        update={"inference_leaderworkersets": ["t-srlm-sampler", "t-srlm-trainer"]}))
    with pytest.raises(KubeError, match=r"forbidden by RBAC .*get/patch leaderworkerset.x-k8s.io/leaderworkersets"):
        wrong.set_inference_version("m9")


def test_the_controller_used_exactly_what_its_role_grants(orchestrator, admin, lws_controller, kube_cluster):
    """From the API server's audit log: a training round and a promotion of this release's
    controller used every permission of its multi-node Role, and nothing else."""
    name = orchestrator.create_training_job("run-lws", 1, "m2", "m3")
    finish_job(admin, name, succeeded=True, nodes=1, namespace=NAMESPACE)
    orchestrator.run_training_job("run-lws", 1, "m2", "m3")
    orchestrator.set_inference_version("m3")
    used = kube_cluster.granted_requests(f"system:serviceaccount:{NAMESPACE}:{CONTROLLER_SA}")
    assert used == {key: set(verbs) for key, verbs in permissions("job", deployments=False,
                                                                      leaderworkersets=True).items()}
