"""The decisions of the controller's Kubernetes mode, as pure functions on API objects."""

from __future__ import annotations

import pytest

from srlm.config import ConfigError, KubernetesConfig, parse_config
from srlm.controller.kube import (LWS_GROUP, LWS_PLURAL, MODEL_VERSION_ANNOTATION, MODEL_VERSION_ENV,
                                  OUT_VERSION_ANNOTATION, RUN_ID_LABEL, KubeError, check_inference, job_name,
                                  job_state, label_value, lws_rollout_state, lws_version_patch, model_version,
                                  name_limit, permissions, render_job, render_trainjob, rollout_state,
                                  template_launcher, version_patch)


def deployment(generation=2, observed=2, replicas=2, updated=2, total=2, available=2, conditions=()):
    return {"metadata": {"name": "d", "generation": generation},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [
                {"name": "sampler", "env": [{"name": "A", "value": "1"}, {"name": MODEL_VERSION_ENV, "value": "m1"}]}]}}},
            "status": {"observedGeneration": observed, "replicas": total, "updatedReplicas": updated,
                       "availableReplicas": available, "conditions": list(conditions)}}


@pytest.mark.parametrize("kwargs, done, failed", [
    ({}, True, False),
    ({"observed": 1}, False, False),                      # new spec not seen yet
    ({"updated": 1}, False, False),                       # new pods still coming
    ({"total": 3}, False, False),                         # an old pod still terminating
    ({"available": 1}, False, False),                     # a new pod not available
    ({"updated": 1, "conditions": [{"type": "Progressing", "status": "False",
                                    "reason": "ProgressDeadlineExceeded", "message": "stuck"}]}, False, True),
])
def test_rollout_state_follows_kubectl(kwargs, done, failed):
    state = rollout_state(deployment(**kwargs))
    assert state.done is done and (state.failed is not None) is failed


def test_job_state():
    assert job_state({"status": {}}) == ("running", "")
    assert job_state({"status": {"conditions": [{"type": "Complete", "status": "True"}]}})[0] == "succeeded"
    state, message = job_state({"status": {"conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "pod failed"}]}})
    assert state == "failed" and message == "BackoffLimitExceeded: pod failed"
    assert job_state({"status": {"conditions": [{"type": "Failed", "status": "False"}]}})[0] == "running"


def test_job_name_is_deterministic_and_valid():
    assert job_name("t-srlm-dpo", "Run_7", 2) == "t-srlm-dpo-run-7-2"
    long = job_name("t-srlm-dpo", "x" * 100, 12)
    assert len(long) <= 63 and long.endswith("-12") and long == job_name("t-srlm-dpo", "x" * 100, 12)
    assert job_name("t-srlm-dpo", "x" * 100 + "a", 12) != long
    with pytest.raises(KubeError):
        job_name("d" * 60, "x" * 100, 1)
    assert label_value("run/with spaces" + "z" * 80) == ("run_with_spaces" + "z" * 80)[:63]


def test_render_job_rejects_what_it_cannot_fill():
    with pytest.raises(KubeError, match="batch/v1 Job"):
        render_job({"kind": "Pod", "apiVersion": "v1"}, name="n", run_id="r", iteration=1,
                   base_version="a", out_version="b", owner=None)
    two = {"kind": "Job", "apiVersion": "batch/v1", "metadata": {"name": "x"},
           "spec": {"template": {"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}}}
    with pytest.raises(KubeError, match="one container"):
        render_job(two, name="n", run_id="r", iteration=1, base_version="a", out_version="b", owner=None)


def test_version_patch_sets_and_removes():
    dep = deployment()
    assert model_version(dep) == "m1"
    patch = version_patch(dep, "m2")
    template = patch["spec"]["template"]
    assert template["metadata"]["annotations"] == {MODEL_VERSION_ANNOTATION: "m2"}
    assert template["spec"]["containers"] == [{"name": "sampler", "env": [{"name": MODEL_VERSION_ENV, "value": "m2"}]}]
    removal = version_patch(dep, None)["spec"]["template"]
    assert removal["metadata"]["annotations"] == {MODEL_VERSION_ANNOTATION: None}
    assert removal["spec"]["containers"][0]["env"] == [{"name": MODEL_VERSION_ENV, "$patch": "delete"}]


# --------------------------------------------------------------------------- multi-node rounds

ROUND = dict(run_id="run-7", iteration=2, base_version="m2", out_version="m3")
OWNER = {"metadata": {"name": "t-srlm-controller", "uid": "u-1"}}
ROUND_ARGS = ["--run-id", "run-7", "--iteration", "2", "--base-version", "m2", "--out-version", "m3"]


def indexed_job(nodes=2, subdomain="t-srlm-dpo"):
    """The shape of the chart's Indexed Job template."""
    pod = {"restartPolicy": "Never", "containers": [{
        "name": "dpo", "args": ["train"],
        "resources": {"limits": {"nvidia.com/gpu": 4}},
        "env": [{"name": "PET_NNODES", "value": str(nodes)},
                {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {
                    "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
                {"name": "PET_MASTER_ADDR", "value": ""}, {"name": "PET_MASTER_PORT", "value": "29500"}]}]}
    if subdomain:
        pod["subdomain"] = subdomain
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "t-srlm-dpo"},
            "spec": {"completionMode": "Indexed", "completions": nodes, "parallelism": nodes,
                     "template": {"spec": pod}}}


def trainjob(nodes=2):
    """The shape of the chart's TrainJob template."""
    return {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "metadata": {"name": "t-srlm-dpo"},
            "spec": {"runtimeRef": {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                    "name": "torch-distributed"},
                     "labels": {"app.kubernetes.io/component": "dpo"},
                     "trainer": {"image": "i", "command": ["srlm"], "args": ["train"], "numNodes": nodes,
                                 "numProcPerNode": 4, "resourcesPerNode": {"limits": {"nvidia.com/gpu": 4}}}}}


def env(container) -> dict:
    return {e["name"]: e for e in container["env"]}


def test_render_job_points_every_rank_at_rank_0():
    template = indexed_job()
    job = render_job(template, name="t-srlm-dpo-run-7-2", owner=OWNER, **ROUND)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    # Pod 0 of an Indexed Job is named <job>-0; the subdomain is the headless Service.
    assert env(container)["PET_MASTER_ADDR"] == {"name": "PET_MASTER_ADDR", "value": "t-srlm-dpo-run-7-2-0.t-srlm-dpo"}
    assert env(container)["PET_NODE_RANK"] == env(template["spec"]["template"]["spec"]["containers"][0])["PET_NODE_RANK"]
    assert container["args"] == ["train", "dpo", *ROUND_ARGS]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"  # a quantity
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    assert job["spec"]["template"]["metadata"]["labels"][RUN_ID_LABEL] == "run-7"
    assert template["spec"]["template"]["spec"]["containers"][0]["env"][2]["value"] == ""  # template untouched


def test_one_pod_keeps_its_own_master():
    job = render_job(indexed_job(nodes=1), name="t-srlm-dpo-run-7-2", owner=None, **ROUND)
    assert env(job["spec"]["template"]["spec"]["containers"][0])["PET_MASTER_ADDR"]["value"] == ""  # loopback


def test_render_job_refuses_a_rank_0_it_cannot_name():
    with pytest.raises(KubeError, match="subdomain"):
        render_job(indexed_job(subdomain=None), name="n", owner=None, **ROUND)
    non_indexed = indexed_job()
    del non_indexed["spec"]["completionMode"]
    with pytest.raises(KubeError, match="must be Indexed"):
        render_job(non_indexed, name="n", owner=None, **ROUND)


def test_render_trainjob():
    template = trainjob()
    tj = render_trainjob(template, name="t-srlm-dpo-run-7-2", owner=OWNER, **ROUND)
    assert tj["metadata"]["name"] == "t-srlm-dpo-run-7-2"
    assert tj["metadata"]["annotations"][OUT_VERSION_ANNOTATION] == "m3"
    assert tj["metadata"]["ownerReferences"] == [{"apiVersion": "apps/v1", "kind": "Deployment",
                                                  "name": "t-srlm-controller", "uid": "u-1"}]
    assert tj["spec"]["labels"] == {"app.kubernetes.io/component": "dpo", RUN_ID_LABEL: "run-7",
                                    "srlm.dev/iteration": "2"}  # to its JobSet and Jobs
    trainer = tj["spec"]["trainer"]
    assert trainer["args"] == ["train", "dpo", *ROUND_ARGS]
    assert trainer["numNodes"] == 2 and trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    assert "env" not in trainer  # Kubeflow injects PET_*; it rejects them in spec.trainer.env
    assert template["spec"]["trainer"]["args"] == ["train"]
    with pytest.raises(KubeError, match="TrainJob"):
        render_trainjob(indexed_job(), name="n", owner=None, **ROUND)
    with pytest.raises(KubeError, match="batch/v1 Job"):
        render_job(trainjob(), name="n", owner=None, **ROUND)
    no_runtime = trainjob()
    del no_runtime["spec"]["runtimeRef"]
    with pytest.raises(KubeError, match="runtimeRef"):
        render_trainjob(no_runtime, name="n", owner=None, **ROUND)


def test_names_leave_room_for_the_pod_hostnames():
    assert template_launcher(indexed_job()) == "job" and template_launcher(trainjob()) == "trainjob"
    assert name_limit(indexed_job(nodes=2)) == 61            # <name>-1
    assert name_limit(indexed_job(nodes=16)) == 60           # <name>-15
    assert name_limit(trainjob(nodes=2)) == 54               # <name>-node-0-1 (Kubeflow's JobSet pods)
    name = job_name("t-srlm-dpo", "x" * 100, 3, max_len=54)
    assert len(name) <= 54 and name.endswith("-3") and len(f"{name}-node-0-1") <= 63


def test_trainjob_state_from_its_conditions():
    def conditions(*conds):
        return {"status": {"conditions": [{"type": t, "status": s, "reason": "R", "message": "m"} for t, s in conds]}}
    assert job_state(conditions(("Suspended", "False")))[0] == "running"
    assert job_state(conditions(("Complete", "True")))[0] == "succeeded"
    assert job_state(conditions(("Failed", "True"))) == ("failed", "R: m")


def test_permissions_follow_the_launcher():
    job, tj = permissions("job"), permissions("trainjob")
    assert job[("batch", "jobs")] == tj[("trainer.kubeflow.org", "trainjobs")] == {"create", "get", "delete"}
    assert ("trainer.kubeflow.org", "trainjobs") not in job and ("batch", "jobs") not in tj
    assert {k: v for k, v in job.items() if k != ("batch", "jobs")} == \
        {k: v for k, v in tj.items() if k != ("trainer.kubeflow.org", "trainjobs")}


# --------------------------------------------------------------------------- multi-node inference (LeaderWorkerSets)

LEADER = "/spec/leaderWorkerTemplate/leaderTemplate"


def lws(replicas=2, updated=2, ready=2, available=True, updating=False, leader_env=None, annotations=None):
    """The shape of the chart's LeaderWorkerSet (inference.multiNode) with an LWS status."""
    leader = {"metadata": {} if annotations is None else {"annotations": annotations},
              "spec": {"containers": [{"name": "sampler", "command": ["/bin/sh", "-c"]}]}}
    if leader_env is not None:
        leader["spec"]["containers"][0]["env"] = leader_env
    conditions = [{"type": "Available", "status": str(available)},
                  {"type": "UpdateInProgress", "status": str(updating)}]
    return {"kind": "LeaderWorkerSet", "metadata": {"name": "l", "generation": 3},
            "spec": {"replicas": replicas, "leaderWorkerTemplate": {
                "size": 2, "leaderTemplate": leader,
                "workerTemplate": {"spec": {"containers": [{"name": "sampler", "args": ["ray start"]}]}}}},
            "status": {"replicas": replicas, "updatedReplicas": updated, "readyReplicas": ready,
                       "conditions": conditions}}


@pytest.mark.parametrize("kwargs, started, done, message", [
    ({}, True, True, "rolled out"),
    ({}, False, False, "waiting for the LeaderWorkerSet controller"),  # the stale status of the last rollout
    ({"updating": True}, False, False, "2 of 2 groups updated"),        # under way (whatever started says)
    ({"updated": 1}, True, False, "1 of 2 groups updated"),
    ({"ready": 1}, True, False, "1 of 2 groups ready"),
    ({"available": False}, True, False, "2 of 2 groups ready"),
    ({"replicas": 0, "updated": 0, "ready": 0}, False, True, "no groups"),
])
def test_lws_rollout_state(kwargs, started, done, message):
    state = lws_rollout_state(lws(**kwargs), started)
    assert state.done is done and message in state.message and state.failed is None


def test_lws_version_patch_edits_the_leader_in_place():
    obj = lws(leader_env=[{"name": "A", "value": "1"}, {"name": MODEL_VERSION_ENV, "value": "m1"}],
              annotations={"checksum/config": "x", MODEL_VERSION_ANNOTATION: "m1"})
    assert model_version(obj) == "m1"
    container = f"{LEADER}/spec/containers/0"
    assert lws_version_patch(obj, "m2") == [
        {"op": "add", "path": f"{LEADER}/metadata/annotations/srlm.dev~1model-version", "value": "m2"},
        {"op": "test", "path": f"{container}/name", "value": "sampler"},
        {"op": "test", "path": f"{container}/env/1/name", "value": MODEL_VERSION_ENV},
        {"op": "replace", "path": f"{container}/env/1", "value": {"name": MODEL_VERSION_ENV, "value": "m2"}},
    ]
    assert lws_version_patch(obj, None) == [
        {"op": "remove", "path": f"{LEADER}/metadata/annotations/srlm.dev~1model-version"},
        {"op": "test", "path": f"{container}/name", "value": "sampler"},
        {"op": "test", "path": f"{container}/env/1/name", "value": MODEL_VERSION_ENV},
        {"op": "remove", "path": f"{container}/env/1"},
    ]


def test_lws_version_patch_adds_what_is_missing():
    entry = {"name": MODEL_VERSION_ENV, "value": "m2"}
    container = f"{LEADER}/spec/containers/0"
    bare = lws()  # no env, no annotations
    assert model_version(bare) is None
    assert lws_version_patch(bare, "m2") == [
        {"op": "add", "path": f"{LEADER}/metadata", "value": {"annotations": {MODEL_VERSION_ANNOTATION: "m2"}}},
        {"op": "test", "path": f"{container}/name", "value": "sampler"},
        {"op": "add", "path": f"{container}/env", "value": [entry]},
    ]
    other_env = lws(leader_env=[{"name": "A", "value": "1"}], annotations={})
    assert lws_version_patch(other_env, "m2")[-1] == {"op": "add", "path": f"{container}/env/-", "value": entry}
    # nothing to remove: only the container is tested
    assert lws_version_patch(other_env, None) == [{"op": "test", "path": f"{container}/name", "value": "sampler"}]


def test_without_a_leader_template_every_pod_is_a_worker():
    obj = lws(leader_env=[{"name": MODEL_VERSION_ENV, "value": "m1"}])
    lwt = obj["spec"]["leaderWorkerTemplate"]
    lwt["workerTemplate"] = lwt.pop("leaderTemplate")
    assert model_version(obj) == "m1"
    worker = "/spec/leaderWorkerTemplate/workerTemplate"
    assert lws_version_patch(obj, "m2")[-1]["path"] == f"{worker}/spec/containers/0/env/0"


def test_permissions_follow_the_inference_kinds():
    lws_only = permissions("job", deployments=False, leaderworkersets=True)
    assert lws_only[(LWS_GROUP, LWS_PLURAL)] == {"get", "patch"}
    assert lws_only[("apps", "deployments")] == {"get"}  # the controller's own, the Jobs' owner
    assert (LWS_GROUP, LWS_PLURAL) not in permissions("job")


def test_multinode_inference_needs_vllm_on_ray():
    lwss = {"kubernetes": {"inference_leaderworkersets": ["t-srlm-sampler"]}}
    on_ray = {"kind": "vllm", "distributed_executor_backend": "ray"}
    check_inference(parse_config({**lwss, "engine": on_ray}, environ={}))
    check_inference(parse_config({}, environ={}))  # Deployments: any engine
    with pytest.raises(KubeError, match="kubernetes.inference_leaderworkersets: .*engine.distributed_executor_backend "
                                        "'ray', not 'vllm' with 'mp'"):
        check_inference(parse_config({**lwss, "engine": {"kind": "vllm", "distributed_executor_backend": "mp"}},
                                     environ={}))
    with pytest.raises(KubeError, match="not 'transformers' with None"):
        check_inference(parse_config(lwss, environ={}))
    with pytest.raises(KubeError, match=r"not 'transformers' with 'ray' for judge \(engine.services.judge\)"):
        check_inference(parse_config({**lwss, "engine": {**on_ray, "services": {"judge": {"kind": "transformers"}}}},
                                     environ={}))
    with pytest.raises(ConfigError, match=r"kubernetes.inference_leaderworkersets: \['a'\] also listed"):
        parse_config({"kubernetes": {"inference_deployments": ["a", "b"], "inference_leaderworkersets": ["a"]}},
                     environ={})
    assert KubernetesConfig(inference_deployments=["a"], inference_leaderworkersets=["b"])
