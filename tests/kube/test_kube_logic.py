"""The decisions of the controller's Kubernetes mode, as pure functions on API objects."""

from __future__ import annotations

import pytest

from srlm.controller.kube import (MODEL_VERSION_ANNOTATION, MODEL_VERSION_ENV, KubeError, job_name, job_state,
                                  label_value, model_version, render_job, rollout_state, version_patch)


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
