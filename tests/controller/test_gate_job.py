"""The eval gate as a Job of its own (Kubernetes mode), as pure logic: the real driver and store,
with the Job's launch recorded instead of run and its decision written as the Job leaves it.
The Job's rendering is tested against a real kube-apiserver (tests/kube/test_kube_mode.py), the
gate itself on the real model (tests/evaluation/test_suite.py)."""

from __future__ import annotations

from srlm.config import parse_config
from srlm.controller.driver import RunDriver
from srlm.controller.gate import GateResult, store_result
from srlm.controller.tracker import Tracker
from srlm.models.store import ModelStore
from srlm.runtime.runconfig import to_yaml
from srlm.v1 import records_pb2 as S
from tests.controller.test_step_versions import Recorded, published, settle

RUN = "gated"


def driver_in_training(tmp_path, mode: str):
    cfg = parse_config({"model_store": {"root": str(tmp_path)}, "tracking": {"tensorboard": False},
                        "services": {"mode": mode}}, environ={})
    tracker, io = Tracker(), Recorded()
    judges = []
    driver = RunDriver(cfg, ModelStore(tmp_path), tracker, io, io, judge_factory=lambda: judges.append(1),
                       trainer_launcher=io.commands.append)
    state = S.RunState(run_id=RUN, config_yaml=to_yaml(cfg), stage=S.STAGE_TRAINING, iteration=1,
                       serving_version=f"{RUN}.m1")
    state.iterations.add(iteration=1, stage=S.STAGE_TRAINING, input_version=f"{RUN}.m1",
                         output_version=f"{RUN}.m2")
    return driver, tracker, io, state, judges


def test_on_kubernetes_the_gate_is_a_job_whose_stored_decision_the_controller_follows(tmp_path):
    driver, tracker, io, state, judges = driver_in_training(tmp_path, "kubernetes")
    published(tracker, f"{RUN}.m2")
    settle(driver, state)
    (gate,) = io.commands
    assert (gate.kind, gate.base_version, gate.output_version, gate.meta.id) == \
        (S.COMMAND_KIND_EVAL_GATE, f"{RUN}.m1", f"{RUN}.m2", f"{RUN}.i1.gate")
    assert gate.config_yaml == state.config_yaml  # the Job gates with the run's config
    assert state.stage == S.STAGE_EVAL and not judges  # no engine in the controller
    settle(driver, state)
    assert state.stage == S.STAGE_EVAL and len(io.commands) == 1  # waits for the Job, launched once

    driver.resume(state)  # a restarted controller launches it again (the Job is found by its name)
    assert [c.meta.id for c in io.commands] == [f"{RUN}.i1.gate"] * 2

    reason = "rejected: win rate 0.400 significantly below 0.5"
    store_result(driver.store, f"{RUN}.m2", f"{RUN}.m1", GateResult(False, reason, {"win_rate.vs_baseline": 0.4}))
    driver.publish_status = lambda *a: None
    settle(driver, state)
    it = state.iterations[0]
    assert (it.promoted, it.gate_reason, it.metrics["win_rate.vs_baseline"]) == (False, reason, 0.4)
    assert io.promoted == [] and state.serving_version == f"{RUN}.m1"
    assert state.stage == S.STAGE_PROMPTS and state.iteration == 2  # the next iteration starts from M1


def test_locally_the_controller_gates_itself(tmp_path):
    driver, tracker, io, state, judges = driver_in_training(tmp_path, "local")
    published(tracker, f"{RUN}.m2")
    driver.advance(state)
    assert state.stage == S.STAGE_EVAL and io.commands == []
