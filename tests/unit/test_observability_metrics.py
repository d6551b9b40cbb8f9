"""The metrics the chart's alerts and dashboard need are set where their events happen:
a promotion rollout's outcome (controller/kube.py) and a trainer log step (trainer/job.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

from srlm.config import KubernetesConfig
from srlm.controller.kube import KubeError, KubeOrchestrator, RolloutFailed


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def orchestrator(wait_results: list) -> KubeOrchestrator:
    """A KubeOrchestrator whose API calls are stubs; each rollout wait pops a result (an
    exception to raise, or None)."""
    orch = object.__new__(KubeOrchestrator)
    orch.cfg = KubernetesConfig(inference_deployments=["d"], rollout_timeout_s=1)
    orch._inference = {"d": "deployment"}
    orch._workload = lambda name: {"metadata": {"name": name}}
    orch._patch_version = lambda obj, version: True

    def wait(names, timeout_s, unchanged):
        result = wait_results.pop(0)
        if result is not None:
            raise result
    orch._wait_rollouts = wait
    return orch


@pytest.mark.parametrize("waits, outcome", [
    ([None], "complete"),
    ([TimeoutError("slow"), None], "rolled_back"),
    ([KubeError("deadline"), KubeError("again")], "rollback_failed"),
])
def test_rollout_outcomes_are_counted(waits, outcome, monkeypatch):
    monkeypatch.setattr("srlm.controller.kube.model_version", lambda deployment: "m1")
    before = sample("srlm_rollouts_total", outcome=outcome)
    orch = orchestrator(list(waits))
    if outcome == "complete":
        orch.set_inference_version("m2")
    else:
        with pytest.raises(RolloutFailed):
            orch.set_inference_version("m2")
    assert sample("srlm_rollouts_total", outcome=outcome) == before + 1


def test_trainer_log_steps_set_the_training_gauges():
    from srlm.trainer.job import ProgressCallback

    seen = []
    cb = ProgressCallback(lambda step, total, logs: seen.append(step), version="m-test")
    cb.on_log(None, SimpleNamespace(global_step=7, max_steps=10), None,
              logs={"loss": 0.25, "rewards/margins": 1.5, "learning_rate": 1e-6})
    assert seen == [7]
    assert sample("srlm_train_loss", version="m-test") == 0.25
    assert sample("srlm_dpo_reward_margin", version="m-test") == 1.5
    assert sample("srlm_train_step", version="m-test") == 7
