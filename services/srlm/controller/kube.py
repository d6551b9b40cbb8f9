"""The controller's Kubernetes mode (``services.mode: kubernetes``).

Two steps of the loop leave the controller's process here:

- a training round (SFT, and each DPO round) runs on the training pool as an Indexed Job
  (``srlm train sft|dpo ...``; one pod per node, torchrun's
  PET_* topology in its env, rank 0 reachable through the chart's headless Service) or as a
  Kubeflow Trainer TrainJob (``kubernetes.training_launcher``), made from the template the
  Helm chart renders into a ConfigMap (``kubernetes.job_template_configmap``), owned by the
  controller's Deployment (so it goes with the release), deleted after success;
- a promoted model version reaches promptgen, sampler and judge as a rollout: their pod
  template gets ``SRLM_MODEL_VERSION`` (and the ``srlm.dev/model-version`` annotation), the
  controller waits for the rollout as ``kubectl rollout status`` does, and rolls every
  Deployment back to its previous version when one fails or the wait times out. With the
  chart's inference.multiNode they are LeaderWorkerSets (``kubernetes.inference_leaderworkersets``):
  the same for their leader pod template, the one that runs srlm.

Objects are handled as plain dicts (the API's JSON); the parts that decide something
(``job_name``, ``render_job``, ``render_trainjob``, ``job_state``, ``rollout_state``,
``lws_rollout_state``, ``version_patch``, ``lws_version_patch``) are pure functions.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from srlm.config import KubernetesConfig, SRLMConfig
from srlm.runtime import metrics
from srlm.v1 import records_pb2

log = logging.getLogger(__name__)

MODEL_VERSION_ENV = "SRLM_MODEL_VERSION"
MODEL_VERSION_ANNOTATION = "srlm.dev/model-version"
RUN_ID_LABEL = "srlm.dev/run-id"
ITERATION_LABEL = "srlm.dev/iteration"
OUT_VERSION_ANNOTATION = "srlm.dev/out-version"
FIELD_MANAGER = "srlm-controller"
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

MASTER_ADDR_ENV = "PET_MASTER_ADDR"
TRAINER_GROUP, TRAINER_VERSION, TRAINJOB_PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
TRAINJOB_NODE = "node"  # Kubeflow's torch runtimes: the replicated job (pods <name>-node-0-<i>)

LWS_GROUP, LWS_VERSION, LWS_PLURAL = "leaderworkerset.x-k8s.io", "v1", "leaderworkersets"

Launcher = Literal["job", "trainjob"]
# What a DPO round is created as, per kubernetes.training_launcher.
TRAINING_RESOURCES: dict[str, tuple[str, str]] = {
    "job": ("batch", "jobs"), "trainjob": (TRAINER_GROUP, TRAINJOB_PLURAL)}


def permissions(launcher: Launcher = "job", deployments: bool = True,
                leaderworkersets: bool = False) -> dict[tuple[str, str], frozenset[str]]:
    """Every API call this module makes with ``launcher`` and inference services that are
    Deployments and/or LeaderWorkerSets, as (API group, resource) -> verbs. The chart's Role
    (helm/srlm/templates/controller-rbac.yaml) grants exactly these; the tests check both ways.
    Deployments are always read: the controller's own owns the training Jobs."""
    granted = {
        TRAINING_RESOURCES[launcher]: frozenset({"create", "get", "delete"}),
        ("apps", "deployments"): frozenset({"get", "patch"} if deployments else {"get"}),
        ("", "configmaps"): frozenset({"get"}),
    }
    if leaderworkersets:
        granted[(LWS_GROUP, LWS_PLURAL)] = frozenset({"get", "patch"})
    return granted


PERMISSIONS = permissions("job")  # the default launcher's

_STRATEGIC_MERGE = "application/strategic-merge-patch+json"
_JSON_PATCH = "application/json-patch+json"


class KubeError(RuntimeError):
    """A Kubernetes call or object is not what the controller needs."""


class JobFailed(KubeError):
    """A DPO round's Job failed (its pods' logs say why; the Job is kept)."""


class RolloutFailed(KubeError):
    """A promotion's rollout failed or timed out; ``rolled_back`` says if the previous
    versions are serving again."""

    def __init__(self, version: str, reason: str, rolled_back: bool):
        state = "rolled back" if rolled_back else "ROLLBACK FAILED"
        super().__init__(f"rollout of model version {version!r} failed ({state}): {reason}")
        self.version, self.reason, self.rolled_back = version, reason, rolled_back


# --------------------------------------------------------------------------- pure parts

_DNS_LABEL = re.compile(r"[^a-z0-9-]+")
_LABEL_VALUE = re.compile(r"[^A-Za-z0-9_.-]+")


def job_name(base: str, run_id: str, iteration: int, max_len: int = 63) -> str:
    """A deterministic Job name (so a restarted controller finds its Job): DNS-1123, <= max_len
    (less than 63 where pod hostnames append to it: see ``name_limit``)."""
    slug = _DNS_LABEL.sub("-", run_id.lower()).strip("-") or "run"
    name = f"{base}-{slug}-{iteration}"
    if len(name) <= max_len:
        return name
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:8]
    keep = max_len - len(base) - len(str(iteration)) - len(digest) - 3
    if keep < 1:
        raise KubeError(f"Job template name {base!r} leaves no room for the run id")
    return f"{base}-{slug[:keep].strip('-')}-{digest}-{iteration}"


def label_value(value: str) -> str:
    """``value`` made a valid label value (<= 63 characters, alphanumerics at both ends)."""
    return _LABEL_VALUE.sub("_", value)[:63].strip("_.-")


ROUND_KINDS = ("sft", "dpo", "grpo", "ppo", "gate")  # gate: `srlm train gate`, the eval gate


def _round_args(kind: str, run_id: str, iteration: int, base_version: str, out_version: str) -> list[str]:
    """What the template's ``srlm train`` is completed with: the round's kind and arguments."""
    if kind not in ROUND_KINDS:
        raise KubeError(f"no training round of kind {kind!r} (one of {ROUND_KINDS})")
    return [kind, "--run-id", run_id, "--iteration", str(iteration), "--base-version", base_version,
            "--out-version", out_version]


def _quantities(resources: dict[str, Any] | None) -> None:
    """YAML reads `nvidia.com/gpu: 1` as a number; the API wants a quantity (a string)."""
    for part in (resources or {}).values():
        part.update({key: str(value) for key, value in part.items()})


def _name_and_own(obj: dict[str, Any], name: str, run_id: str, iteration: int, out_version: str,
                  owner: dict[str, Any] | None) -> dict[str, str]:
    """Name, label, annotate and owner-reference ``obj``; returns the round's labels."""
    meta = obj.setdefault("metadata", {})
    meta["name"] = name
    meta.pop("generateName", None)
    labels = {RUN_ID_LABEL: label_value(run_id), ITERATION_LABEL: str(iteration)}
    meta.setdefault("labels", {}).update(labels)
    meta.setdefault("annotations", {}).update({RUN_ID_LABEL: run_id, OUT_VERSION_ANNOTATION: out_version})
    if owner is not None:
        meta["ownerReferences"] = [{
            "apiVersion": owner.get("apiVersion", "apps/v1"), "kind": owner.get("kind", "Deployment"),
            "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
        }]
    return labels


def template_launcher(template: dict[str, Any]) -> Launcher:
    """Which launcher a DPO template is for: a batch/v1 Job or a Kubeflow Trainer TrainJob."""
    kind, api_version = template.get("kind"), template.get("apiVersion", "")
    if kind == "Job" and api_version.startswith("batch/"):
        return "job"
    if kind == "TrainJob" and api_version == f"{TRAINER_GROUP}/{TRAINER_VERSION}":
        return "trainjob"
    raise KubeError(f"the DPO template must be a batch/v1 Job or a {TRAINER_GROUP}/{TRAINER_VERSION} TrainJob, "
                    f"not {api_version} {kind}")


def name_limit(template: dict[str, Any]) -> int:
    """The longest name the round may get: pod hostnames (<= 63) append to it, `<name>-<index>`
    for an Indexed Job, `<name>-node-0-<index>` for a TrainJob (its JobSet's pods)."""
    if template_launcher(template) == "job":
        nodes = int(template.get("spec", {}).get("completions") or 1)
        return 63 - len(f"-{nodes - 1}")
    nodes = int(template.get("spec", {}).get("trainer", {}).get("numNodes") or 1)
    return 63 - len(f"-{TRAINJOB_NODE}-0-{nodes - 1}")


def render_job(template: dict[str, Any], *, name: str, run_id: str, iteration: int,
               base_version: str, out_version: str, owner: dict[str, Any] | None, kind: str = "dpo") -> dict[str, Any]:
    """The Job of one training round (SFT or DPO): the template, named, labelled, owned, with the
    round's kind and arguments appended to its (single) container's args and, with several pods,
    PET_MASTER_ADDR set to rank 0's pod, `<name>-0.<subdomain>` (the Job's name is only known
    here; one pod keeps the template's value, empty: its own loopback, no DNS needed)."""
    if template_launcher(template) != "job":
        raise KubeError("the DPO Job template must be a batch/v1 Job")
    job = copy.deepcopy(template)
    labels = _name_and_own(job, name, run_id, iteration, out_version, owner)
    spec = job["spec"]
    if int(spec.get("completions") or 1) > 1 and spec.get("completionMode") != "Indexed":
        raise KubeError("a DPO Job with several pods must be Indexed (completionMode: Indexed): "
                        "the completion index is the node rank")
    pod = spec["template"]
    pod.setdefault("metadata", {}).setdefault("labels", {}).update(labels)
    containers = pod["spec"]["containers"]
    if len(containers) != 1:
        raise KubeError(f"the DPO Job template must have one container, it has {len(containers)}")
    _quantities(containers[0].get("resources"))
    containers[0]["args"] = list(containers[0].get("args") or []) + _round_args(
        kind, run_id, iteration, base_version, out_version)
    for env in containers[0].get("env") or []:
        if env.get("name") == MASTER_ADDR_ENV and int(spec.get("completions") or 1) > 1:
            subdomain = pod["spec"].get("subdomain")
            if not subdomain or spec.get("completionMode") != "Indexed":
                raise KubeError(f"{MASTER_ADDR_ENV} needs an Indexed Job whose pods have a subdomain "
                                "(the headless Service that gives rank 0 its DNS name)")
            env.pop("valueFrom", None)
            env["value"] = f"{name}-0.{subdomain}"
    return job


def render_trainjob(template: dict[str, Any], *, name: str, run_id: str, iteration: int,
                    base_version: str, out_version: str, owner: dict[str, Any] | None,
                    kind: str = "dpo") -> dict[str, Any]:
    """The Kubeflow Trainer TrainJob of one training round: the template, named, labelled (the
    labels also go to its JobSet and Jobs through spec.labels), owned, with the round's kind
    and arguments appended to spec.trainer.args. Kubeflow sets the PET_* variables itself."""
    if template_launcher(template) != "trainjob":
        raise KubeError(f"the DPO TrainJob template must be a {TRAINER_GROUP}/{TRAINER_VERSION} TrainJob")
    trainjob = copy.deepcopy(template)
    labels = _name_and_own(trainjob, name, run_id, iteration, out_version, owner)
    spec = trainjob.setdefault("spec", {})
    if not (spec.get("runtimeRef") or {}).get("name"):
        raise KubeError("the DPO TrainJob template has no spec.runtimeRef.name (the ClusterTrainingRuntime)")
    trainer = spec.get("trainer")
    if not trainer:
        raise KubeError("the DPO TrainJob template has no spec.trainer")
    spec.setdefault("labels", {}).update(labels)
    _quantities(trainer.get("resourcesPerNode"))
    trainer["args"] = list(trainer.get("args") or []) + _round_args(kind, run_id, iteration, base_version,
                                                                    out_version)
    return trainjob


def job_state(job: dict[str, Any]) -> tuple[Literal["running", "succeeded", "failed"], str]:
    """Where a Job or a TrainJob stands, from its conditions (the Job controller's terminal
    ones and the interim SuccessCriteriaMet / FailureTarget; a TrainJob's Complete / Failed)."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "succeeded", cond.get("message", "")
        if cond.get("type") in ("Failed", "FailureTarget"):
            return "failed", f"{cond.get('reason', '')}: {cond.get('message', '')}".strip(": ")
    return "running", ""


@dataclass(frozen=True)
class RolloutState:
    done: bool
    failed: str | None = None  # why the rollout cannot complete
    message: str = ""


def rollout_state(deployment: dict[str, Any]) -> RolloutState:
    """A Deployment's rollout, judged as ``kubectl rollout status`` judges it."""
    meta, spec, status = deployment["metadata"], deployment.get("spec") or {}, deployment.get("status") or {}
    name = meta["name"]
    if meta.get("generation", 0) > status.get("observedGeneration", 0):
        return RolloutState(False, message=f"{name}: waiting for the new spec to be observed")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return RolloutState(False, failed=f"{name}: {cond.get('message') or 'progress deadline exceeded'}")
    want = spec.get("replicas", 1)
    updated, total, available = (status.get(k, 0) for k in ("updatedReplicas", "replicas", "availableReplicas"))
    if updated < want:
        return RolloutState(False, message=f"{name}: {updated} of {want} new replicas updated")
    if total > updated:
        return RolloutState(False, message=f"{name}: {total - updated} old replicas pending termination")
    if available < updated:
        return RolloutState(False, message=f"{name}: {available} of {updated} updated replicas available")
    return RolloutState(True, message=f"{name}: rolled out")


def lws_rollout_state(lws: dict[str, Any], started: bool) -> RolloutState:
    """A LeaderWorkerSet's rollout, from its status: every group (leader and workers) updated
    and ready, and Available. Its status has no observedGeneration, so right after a patch it
    still reads as the old rollout's end: until ``started`` (the LWS controller was seen rolling
    the new template: UpdateInProgress, or groups not updated) it is not done. New groups take
    minutes (pods started, a model loaded over nodes), far longer than a poll, so the rollout is
    seen under way. There is no progress deadline either: a rollout that never completes ends at
    the controller's timeout."""
    name, status = lws["metadata"]["name"], lws.get("status") or {}
    want = (lws.get("spec") or {}).get("replicas", 1)
    if want == 0:
        return RolloutState(True, message=f"{name}: no groups")
    if lws_updating(lws):
        return RolloutState(False, message=f"{name}: {status.get('updatedReplicas', 0)} of {want} groups updated")
    if not started:
        return RolloutState(False, message=f"{name}: waiting for the LeaderWorkerSet controller to start the rollout")
    available = any(c.get("type") == "Available" and c.get("status") == "True" for c in status.get("conditions") or [])
    if status.get("readyReplicas", 0) < want or not available:
        return RolloutState(False, message=f"{name}: {status.get('readyReplicas', 0)} of {want} groups ready")
    return RolloutState(True, message=f"{name}: rolled out")


def lws_updating(lws: dict[str, Any]) -> bool:
    """Whether a LeaderWorkerSet's status shows a rollout under way: UpdateInProgress, or
    fewer groups on the current template than wanted."""
    status = lws.get("status") or {}
    if any(c.get("type") == "UpdateInProgress" and c.get("status") == "True" for c in status.get("conditions") or []):
        return True
    return status.get("updatedReplicas", 0) < (lws.get("spec") or {}).get("replicas", 1)


def _serving_template(obj: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The pod template that runs srlm and its JSON pointer: a Deployment's, or a
    LeaderWorkerSet's leader template (its workers only run Ray; without a leader template
    every pod is made from the worker template)."""
    spec = obj["spec"]
    if "leaderWorkerTemplate" in spec:
        lwt = spec["leaderWorkerTemplate"]
        if lwt.get("leaderTemplate"):
            return "/spec/leaderWorkerTemplate/leaderTemplate", lwt["leaderTemplate"]
        return "/spec/leaderWorkerTemplate/workerTemplate", lwt["workerTemplate"]
    return "/spec/template", spec["template"]


def model_version(obj: dict[str, Any]) -> str | None:
    """The SRLM_MODEL_VERSION a Deployment's (or LeaderWorkerSet leader's) pod template sets
    (None: not set)."""
    for container in _serving_template(obj)[1]["spec"]["containers"]:
        for env in container.get("env") or []:
            if env.get("name") == MODEL_VERSION_ENV:
                return env.get("value")
    return None


def version_patch(deployment: dict[str, Any], version: str | None) -> dict[str, Any]:
    """A strategic-merge patch setting (or, for None, removing) the model version in every
    container of the pod template; the changed template makes the Deployment roll out."""
    env = {"name": MODEL_VERSION_ENV, "value": version} if version is not None \
        else {"name": MODEL_VERSION_ENV, "$patch": "delete"}
    containers = [{"name": c["name"], "env": [env]}
                  for c in deployment["spec"]["template"]["spec"]["containers"]]
    return {"spec": {"template": {
        "metadata": {"annotations": {MODEL_VERSION_ANNOTATION: version}},
        "spec": {"containers": containers},
    }}}


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def lws_version_patch(lws: dict[str, Any], version: str | None) -> list[dict[str, Any]]:
    """The same change as ``version_patch`` for a LeaderWorkerSet, as a JSON patch (custom
    resources take no strategic merge, and a merge patch would replace whole lists): each
    entry it edits is first tested, so a template changed since ``lws`` was read fails the
    patch instead of editing the wrong entry. The new leader template makes the LWS roll out
    whole groups (its revision covers both templates)."""
    path, template = _serving_template(lws)
    ops: list[dict[str, Any]] = []
    annotations = (template.get("metadata") or {}).get("annotations")
    if version is not None:
        if annotations is None:
            metadata = {**(template.get("metadata") or {}), "annotations": {MODEL_VERSION_ANNOTATION: version}}
            ops.append({"op": "add", "path": f"{path}/metadata", "value": metadata})
        else:
            ops.append({"op": "add", "path": f"{path}/metadata/annotations/{_pointer(MODEL_VERSION_ANNOTATION)}",
                        "value": version})
    elif annotations and MODEL_VERSION_ANNOTATION in annotations:
        ops.append({"op": "remove", "path": f"{path}/metadata/annotations/{_pointer(MODEL_VERSION_ANNOTATION)}"})
    for i, container in enumerate(template["spec"]["containers"]):
        env_path = f"{path}/spec/containers/{i}/env"
        ops.append({"op": "test", "path": f"{path}/spec/containers/{i}/name", "value": container["name"]})
        env = container.get("env")
        at = next((j for j, e in enumerate(env or []) if e.get("name") == MODEL_VERSION_ENV), None)
        entry = {"name": MODEL_VERSION_ENV, "value": version}
        if at is not None:
            ops.append({"op": "test", "path": f"{env_path}/{at}/name", "value": MODEL_VERSION_ENV})
            ops.append({"op": "remove", "path": f"{env_path}/{at}"} if version is None else
                       {"op": "replace", "path": f"{env_path}/{at}", "value": entry})
        elif version is not None:
            ops.append({"op": "add", "path": f"{env_path}/-", "value": entry} if env is not None else
                       {"op": "add", "path": env_path, "value": [entry]})
    return ops


# --------------------------------------------------------------------------- the client


def api_client(cfg: KubernetesConfig) -> k8s.ApiClient:
    """An API client: api_server + token_file, else a kubeconfig, else in-cluster."""
    if cfg.api_server:
        conf = k8s.Configuration()
        conf.host = cfg.api_server
        if cfg.token_file:
            token_file = cfg.token_file

            def reload_token(c: k8s.Configuration) -> None:  # projected tokens rotate
                c.api_key["authorization"] = token_file.read_text().strip()

            conf.api_key_prefix["authorization"] = "Bearer"
            conf.refresh_api_key_hook = reload_token
            reload_token(conf)
        if cfg.ca_file:
            conf.ssl_ca_cert = str(cfg.ca_file)
        else:
            conf.verify_ssl = False
        return k8s.ApiClient(conf)
    if cfg.kubeconfig:
        return k8s_config.new_client_from_config(config_file=str(cfg.kubeconfig), persist_config=False)
    conf = k8s.Configuration()
    k8s_config.load_incluster_config(client_configuration=conf)
    return k8s.ApiClient(conf)


def _namespace(cfg: KubernetesConfig) -> str:
    if cfg.namespace:
        return cfg.namespace
    if IN_CLUSTER_NAMESPACE.is_file():
        return IN_CLUSTER_NAMESPACE.read_text().strip()
    raise KubeError("kubernetes.namespace is not set and the controller does not run in a pod")


class KubeOrchestrator:
    """DPO rounds as Jobs (or TrainJobs) and promotions as rollouts, in one namespace."""

    def __init__(self, api: k8s.ApiClient, namespace: str, cfg: KubernetesConfig):
        self.namespace, self.cfg = namespace, cfg
        self.launcher: Launcher = cfg.training_launcher
        # The kind of each inference workload a promotion rolls out, by name.
        self._inference: dict[str, str] = {**dict.fromkeys(cfg.inference_deployments, "deployment"),
                                           **dict.fromkeys(cfg.inference_leaderworkersets, "leaderworkerset")}
        self.permissions = permissions(self.launcher, bool(cfg.inference_deployments),
                                       bool(cfg.inference_leaderworkersets))
        self._core, self._apps, self._batch = k8s.CoreV1Api(api), k8s.AppsV1Api(api), k8s.BatchV1Api(api)
        self._custom = k8s.CustomObjectsApi(api)
        self._kind = "job" if self.launcher == "job" else "trainjob"  # in messages

    @classmethod
    def from_config(cls, cfg: KubernetesConfig) -> "KubeOrchestrator":
        return cls(api_client(cfg), _namespace(cfg), cfg)

    # ------------------------------------------------------------------ calls

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """One API call, answered as the JSON dict; errors name what was attempted."""
        try:
            resp = fn(*args, namespace=self.namespace, _preload_content=False, **kwargs)
        except ApiException as err:
            raise self._error(what, err) from None
        return json.loads(resp.data or b"{}")

    def _error(self, what: str, err: ApiException) -> KubeError:
        return _api_error(what, self.namespace, err, self.permissions)

    def _deployment(self, name: str) -> dict[str, Any]:
        return self._call(f"get deployment {name}", self._apps.read_namespaced_deployment, name)

    def _workload(self, name: str) -> dict[str, Any]:
        """An inference workload: a Deployment or a LeaderWorkerSet."""
        if self._inference[name] == "leaderworkerset":
            return self._call(f"get leaderworkerset {name}", self._custom.get_namespaced_custom_object,
                              LWS_GROUP, LWS_VERSION, plural=LWS_PLURAL, name=name)
        return self._deployment(name)

    def _job(self, name: str) -> dict[str, Any]:
        if self.launcher == "trainjob":
            return self._call(f"get trainjob {name}", self._custom.get_namespaced_custom_object,
                              TRAINER_GROUP, TRAINER_VERSION, plural=TRAINJOB_PLURAL, name=name)
        return self._call(f"get job {name}", self._batch.read_namespaced_job, name)

    def job_template(self) -> dict[str, Any]:
        name, key = self.cfg.job_template_configmap, self.cfg.job_template_key
        cm = self._call(f"get configmap {name}", self._core.read_namespaced_config_map, name)
        text = (cm.get("data") or {}).get(key)
        if not text:
            raise KubeError(f"configmap {name} has no key {key!r} (the DPO Job template)")
        return yaml.safe_load(text)

    # ------------------------------------------------------------------ training Jobs

    def create_training_job(self, run_id: str, iteration: int, base_version: str, out_version: str,
                            kind: str = "dpo") -> str:
        """Create the Job (or TrainJob) of the training round of ``iteration`` (SFT: iteration 0);
        returns its name. Creating it again (a restarted controller) finds the existing one of
        the same round."""
        template = self.job_template()
        if template_launcher(template) != self.launcher:
            raise KubeError(f"the DPO template in configmap {self.cfg.job_template_configmap} is a "
                            f"{template.get('kind')}, but kubernetes.training_launcher is {self.launcher!r} "
                            "(the chart sets both from trainingJob.launcher)")
        # the gate's Job follows its iteration's training Job: a name of its own
        base = template["metadata"]["name"] + ("-gate" if kind == "gate" else "")
        name = job_name(base, run_id, iteration, name_limit(template))
        owner = None
        if self.cfg.controller_deployment:
            owner = self._deployment(self.cfg.controller_deployment)
        render = render_job if self.launcher == "job" else render_trainjob
        obj = render(template, name=name, run_id=run_id, iteration=iteration,
                     base_version=base_version, out_version=out_version, owner=owner, kind=kind)
        try:
            if self.launcher == "trainjob":
                # Strict: a field the installed CRD does not know fails here, not silently dropped.
                self._custom.create_namespaced_custom_object(
                    TRAINER_GROUP, TRAINER_VERSION, self.namespace, TRAINJOB_PLURAL, obj,
                    field_manager=FIELD_MANAGER, field_validation="Strict", _preload_content=False)
            else:
                self._batch.create_namespaced_job(self.namespace, obj, field_manager=FIELD_MANAGER,
                                                  _preload_content=False)
            log.info("created %s %s (run %s, iteration %d: %s -> %s)", obj["kind"], name, run_id, iteration,
                     base_version, out_version)
        except ApiException as err:
            if err.status != 409:
                raise self._error(f"create {self._kind} {name}", err) from None
            existing = self._job(name).get("metadata", {}).get("annotations") or {}
            if existing.get(OUT_VERSION_ANNOTATION) != out_version:
                raise KubeError(f"{self._kind} {name} already exists for out-version "
                                f"{existing.get(OUT_VERSION_ANNOTATION)!r}, not {out_version!r}") from None
            log.info("%s %s exists already; following it", obj["kind"], name)
        return name

    def wait_job(self, name: str, timeout_s: float | None = None) -> None:
        """Return when the Job succeeded; raise JobFailed, or TimeoutError after ``timeout_s``
        (default ``kubernetes.job_timeout_s``)."""
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.cfg.job_timeout_s)
        while True:
            state, message = job_state(self._job(name))
            if state == "succeeded":
                return
            if state == "failed":
                raise JobFailed(f"{self._kind} {name} failed: {message}")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self._kind} {name} did not finish in time")
            time.sleep(self.cfg.poll_interval_s)

    def delete_job(self, name: str) -> None:
        """Delete a Job (or TrainJob) and what it made; one already gone is fine."""
        try:
            if self.launcher == "trainjob":
                self._custom.delete_namespaced_custom_object(
                    TRAINER_GROUP, TRAINER_VERSION, self.namespace, TRAINJOB_PLURAL, name,
                    propagation_policy="Background", _preload_content=False)
            else:
                self._batch.delete_namespaced_job(name, self.namespace, propagation_policy="Background",
                                                  _preload_content=False)
        except ApiException as err:
            if err.status != 404:
                raise self._error(f"delete {self._kind} {name}", err) from None

    def run_training_job(self, run_id: str, iteration: int, base_version: str, out_version: str,
                         kind: str = "dpo") -> None:
        """One training round: create, wait, delete after success (a failed Job stays for its logs)."""
        name = self.create_training_job(run_id, iteration, base_version, out_version, kind)
        self.wait_job(name)
        self.delete_job(name)

    # ------------------------------------------------------------------ promotions

    def set_inference_version(self, version: str, timeout_s: float | None = None) -> dict[str, str | None]:
        """Roll the inference Deployments (and LeaderWorkerSets) to ``version``; returns each
        one's previous version. On a failed or timed-out rollout every patched one goes back to
        its previous version and RolloutFailed is raised."""
        names = list(self._inference)
        if not names:
            raise KubeError("kubernetes.inference_deployments and inference_leaderworkersets are empty: "
                            "nothing to roll out")
        timeout = timeout_s if timeout_s is not None else self.cfg.rollout_timeout_s
        current = {name: self._workload(name) for name in names}
        previous = {name: model_version(obj) for name, obj in current.items()}
        patched: list[str] = []
        unchanged: list[str] = []
        try:
            for name in names:
                if not self._patch_version(current[name], version):
                    unchanged.append(name)
                patched.append(name)
            self._wait_rollouts(names, timeout, unchanged)
        except (KubeError, TimeoutError) as err:
            log.error("rollout of %s failed: %s; rolling back %s", version, err, patched)
            rolled_back = self._roll_back(patched, previous, timeout)
            metrics.ROLLOUTS.labels("rolled_back" if rolled_back else "rollback_failed").inc()
            raise RolloutFailed(version, str(err), rolled_back) from err
        metrics.ROLLOUTS.labels("complete").inc()
        log.info("model version %s rolled out to %s", version, ", ".join(names))
        return previous

    def _patch_version(self, obj: dict[str, Any], version: str | None) -> bool:
        """Set the model version in a workload's pod template; returns whether its spec changed
        (a new generation: something to roll out)."""
        name = obj["metadata"]["name"]
        if self._inference[name] == "leaderworkerset":
            patched = self._call(f"patch leaderworkerset {name}", self._custom.patch_namespaced_custom_object,
                                 LWS_GROUP, LWS_VERSION, plural=LWS_PLURAL, name=name,
                                 body=lws_version_patch(obj, version), field_manager=FIELD_MANAGER,
                                 _content_type=_JSON_PATCH)
        else:
            patched = self._call(f"patch deployment {name}", self._apps.patch_namespaced_deployment, name,
                                 body=version_patch(obj, version), field_manager=FIELD_MANAGER,
                                 _content_type=_STRATEGIC_MERGE)
        return patched["metadata"].get("generation") != obj["metadata"].get("generation")

    def _wait_rollouts(self, names: list[str], timeout_s: float, unchanged: list[str]) -> None:
        deadline = time.monotonic() + timeout_s
        pending = list(names)
        # LeaderWorkerSets whose rollout was seen under way (or that have nothing to roll out):
        # only then does their status speak of the new template (see lws_rollout_state).
        started = set(unchanged)
        while True:
            states = []
            for name in pending:
                obj = self._workload(name)
                if self._inference[name] == "leaderworkerset":
                    if lws_updating(obj):
                        started.add(name)
                    states.append(lws_rollout_state(obj, name in started))
                else:
                    states.append(rollout_state(obj))
            failed = [s.failed for s in states if s.failed]
            if failed:
                raise KubeError("; ".join(failed))
            pending = [name for name, s in zip(pending, states) if not s.done]
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"rollout not complete after {timeout_s:g} s: "
                                   + "; ".join(s.message for s in states if not s.done))
            time.sleep(self.cfg.poll_interval_s)

    def _roll_back(self, names: list[str], previous: dict[str, str | None], timeout_s: float) -> bool:
        try:
            unchanged = [name for name in names if not self._patch_version(self._workload(name), previous[name])]
            self._wait_rollouts(names, timeout_s, unchanged)
            return True
        except (KubeError, TimeoutError) as err:
            log.error("rollback failed: %s", err)
            return False


# --------------------------------------------------------------------------- the controller's hooks


class KubePromoter:
    """The controller's Promoter on Kubernetes: a promotion is a rollout (see
    KubeOrchestrator.set_inference_version); a failed one raises RolloutFailed."""

    def __init__(self, orchestrator: KubeOrchestrator):
        self.orchestrator = orchestrator

    def promote(self, version_id: str) -> float:
        start = time.perf_counter()
        self.orchestrator.set_inference_version(version_id)
        return time.perf_counter() - start


JOB_KINDS = {records_pb2.COMMAND_KIND_TRAIN_SFT: "sft", records_pb2.COMMAND_KIND_TRAIN_DPO: "dpo",
             records_pb2.COMMAND_KIND_TRAIN_GRPO: "grpo", records_pb2.COMMAND_KIND_TRAIN_PPO: "ppo",
             records_pb2.COMMAND_KIND_EVAL_GATE: "gate"}


class KubeTrainerLauncher:
    """The controller's trainer launcher on Kubernetes: a training round's command (TRAIN_SFT,
    TRAIN_DPO, ...) or an EVAL_GATE becomes its Job and returns at once (the Job publishes the new
    version on srlm.models, or leaves the gate's decision in the store, which the controller
    follows); a watcher thread deletes the Job after success, or reports the failure to
    ``on_failure``. Other commands go to ``fallback``."""

    def __init__(self, orchestrator: KubeOrchestrator,
                 fallback: Callable[[records_pb2.IterationCommand], None] | None = None,
                 on_failure: Callable[[records_pb2.IterationCommand, Exception], None] | None = None):
        self.orchestrator, self.fallback, self.on_failure = orchestrator, fallback, on_failure

    def __call__(self, cmd: records_pb2.IterationCommand) -> None:
        kind = JOB_KINDS.get(cmd.kind)
        if kind is None:
            if self.fallback is None:
                raise KubeError(f"only training rounds and eval gates run as Jobs; no fallback for command kind "
                                f"{cmd.kind}")
            self.fallback(cmd)
            return
        name = self.orchestrator.create_training_job(cmd.meta.run_id, cmd.meta.iteration,
                                                     cmd.base_version, cmd.output_version, kind)
        threading.Thread(target=self._watch, args=(cmd, name), name=f"watch-{name}", daemon=True).start()

    def _watch(self, cmd: records_pb2.IterationCommand, name: str) -> None:
        try:
            self.orchestrator.wait_job(name)
            self.orchestrator.delete_job(name)
        except Exception as err:  # noqa: BLE001 - reported, the Job is kept for its logs
            log.error("%s Job of iteration %s of run %s: %s", JOB_KINDS[cmd.kind], cmd.meta.iteration, cmd.meta.run_id,
                      err)
            if self.on_failure is not None:
                self.on_failure(cmd, err)


def check_inference(config: SRLMConfig) -> None:
    """Refuse, at start-up, inference services spread over nodes that their engine cannot span:
    vLLM reaches another node's GPUs only through Ray."""
    if not config.kubernetes.inference_leaderworkersets:
        return
    for service in ("promptgen", "sampler", "judge"):
        engine = config.engine.for_service(service)
        if (engine.kind, engine.distributed_executor_backend) != ("vllm", "ray"):
            raise KubeError(f"kubernetes.inference_leaderworkersets: multi-node inference services need engine.kind "
                            f"'vllm' with engine.distributed_executor_backend 'ray', not {engine.kind!r} with "
                            f"{engine.distributed_executor_backend!r} for {service} (engine.services.{service})")


def kube_promoter_and_launcher(config: SRLMConfig, fallback=None, on_failure=None
                               ) -> tuple[KubePromoter, KubeTrainerLauncher]:
    """The Promoter and trainer launcher of ``services.mode: kubernetes``."""
    check_inference(config)
    orchestrator = KubeOrchestrator.from_config(config.kubernetes)
    return KubePromoter(orchestrator), KubeTrainerLauncher(orchestrator, fallback, on_failure)


def _api_error(what: str, namespace: str, err: ApiException,
               granted: dict[tuple[str, str], frozenset[str]] = PERMISSIONS) -> KubeError:
    if err.status == 403:
        return KubeError(f"{what} in namespace {namespace}: forbidden by RBAC "
                         f"(the controller's Role grants only {_permissions_text(granted)})")
    reason = err.reason
    try:
        reason = json.loads(err.body).get("message", reason)
    except (TypeError, ValueError):
        pass
    return KubeError(f"{what} in namespace {namespace}: HTTP {err.status}: {reason}")


def _permissions_text(granted: dict[tuple[str, str], frozenset[str]]) -> str:
    return ", ".join(f"{'/'.join(sorted(verbs))} {group or 'core'}/{resource}"
                     for (group, resource), verbs in granted.items())
