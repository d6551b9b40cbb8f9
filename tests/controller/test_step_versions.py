"""The controller's step versions (``run.groups_per_version``), as pure logic: the real driver and
tracker, with the data plane, the trainer and the promoter recorded instead of run. The e2e PPO
test runs the same through the real services."""

from __future__ import annotations

import pytest

from srlm.config import ConfigError, parse_config
from srlm.controller.driver import RunDriver
from srlm.controller.tracker import Tracker
from srlm.models.store import ModelStore
from srlm.runtime.records import meta
from srlm.runtime.runconfig import to_yaml
from srlm.v1 import records_pb2 as S

RUN = "steps"


class Recorded:
    def __init__(self):
        self.sent, self.promoted, self.commands = [], [], []

    def send(self, topic, key, msg):
        self.sent.append((topic, msg))

    def flush(self):
        pass

    def promote(self, version_id):
        self.promoted.append(version_id)
        return 0.0


def driver_at_candidates(tmp_path, prompts: int, k: int):
    cfg = parse_config({"run": {"objective": "ppo", "groups_per_version": k},
                                  "model_store": {"root": str(tmp_path)}, "tracking": {"tensorboard": False}})
    tracker, io = Tracker(), Recorded()
    driver = RunDriver(cfg, ModelStore(tmp_path), tracker, io, io, judge_factory=lambda: None,
                       trainer_launcher=io.commands.append)
    state = S.RunState(run_id=RUN, config_yaml=to_yaml(cfg), stage=S.STAGE_CANDIDATES, iteration=1,
                       serving_version=f"{RUN}.m1")
    state.iterations.add(iteration=1, stage=S.STAGE_CANDIDATES, input_version=f"{RUN}.m1", prompts=prompts)
    return driver, tracker, io, state


def judged(tracker: Tracker, *groups: str, rewarded: bool = True) -> None:
    for g in groups:
        tracker.apply("candidates", S.CandidateSet(meta=meta(RUN, 1, f"{RUN}.m1", g)))
        candidate = S.JudgedCandidate(candidate_id=f"{g}-0", **({"reward": 1.0} if rewarded else {}))
        tracker.apply("judgments", S.JudgmentSet(meta=meta(RUN, 1, f"{RUN}.m1", g), candidates=[candidate]))


def published(tracker: Tracker, version: str) -> None:
    tracker.apply("models", S.ModelVersion(version_id=version))


def round_of(cmd: S.IterationCommand) -> tuple:
    return cmd.meta.id, cmd.kind, cmd.base_version, cmd.output_version, list(cmd.group_ids)


def settle(driver: RunDriver, state: S.RunState) -> None:
    while driver.advance(state):
        pass


def test_step_versions_train_on_every_k_groups_serve_the_sampler_and_chain_to_m_t_plus_1(tmp_path):
    driver, tracker, io, state = driver_at_candidates(tmp_path, prompts=5, k=2)
    judged(tracker, "g1")
    settle(driver, state)
    assert io.commands == []  # fewer than K groups

    judged(tracker, "g2")
    settle(driver, state)
    (step1,) = io.commands
    assert (step1.kind, step1.base_version, step1.output_version, list(step1.group_ids)) == \
        (S.COMMAND_KIND_TRAIN_PPO, f"{RUN}.m1", f"{RUN}.m2.s1", ["g1", "g2"])
    assert step1.meta.id == f"{RUN}.i1.ppo.s1"
    judged(tracker, "g3", "g4")
    settle(driver, state)
    assert len(io.commands) == 1 and io.promoted == []  # one round at a time; s1 is still training

    published(tracker, f"{RUN}.m2.s1")
    settle(driver, state)
    assert io.promoted == [f"{RUN}.m2.s1"]  # the sampler draws from it at once
    it = state.iterations[0]
    assert it.sampling_version == f"{RUN}.m2.s1" and state.serving_version == f"{RUN}.m1"  # not gated yet
    step2 = io.commands[1]  # g3 and g4 were waiting, and g5 is still to come
    assert (step2.base_version, step2.output_version, list(step2.group_ids)) == \
        (f"{RUN}.m2.s1", f"{RUN}.m2.s2", ["g3", "g4"])

    judged(tracker, "g5")
    settle(driver, state)
    assert state.stage == S.STAGE_JUDGMENTS and len(io.commands) == 2  # waits for s2 before the last round
    published(tracker, f"{RUN}.m2.s2")
    settle(driver, state)
    last = io.commands[2]
    assert (last.base_version, last.output_version, list(last.group_ids), last.meta.id) == \
        (f"{RUN}.m2.s2", f"{RUN}.m2", ["g5"], f"{RUN}.i1.ppo")
    assert state.stage == S.STAGE_TRAINING and it.output_version == f"{RUN}.m2"
    assert it.metrics["step_versions"] == 2 and list(it.trained_group_ids) == ["g1", "g2", "g3", "g4"]

    # A restarted controller re-sends the round the run is in, with the same id.
    driver.resume(state)
    assert round_of(io.commands[3]) == round_of(last)


def test_the_last_k_groups_train_m_t_plus_1_itself(tmp_path):
    driver, tracker, io, state = driver_at_candidates(tmp_path, prompts=4, k=2)
    judged(tracker, "g1", "g2", "g3", "g4")  # all at once: one step round, then M2 on the rest
    settle(driver, state)
    published(tracker, f"{RUN}.m2.s1")
    settle(driver, state)
    assert [(c.output_version, list(c.group_ids)) for c in io.commands] == \
        [(f"{RUN}.m2.s1", ["g1", "g2"]), (f"{RUN}.m2", ["g3", "g4"])]


def test_a_step_round_in_flight_is_re_sent_after_a_restart(tmp_path):
    driver, tracker, io, state = driver_at_candidates(tmp_path, prompts=5, k=2)
    judged(tracker, "g1", "g2")
    settle(driver, state)
    driver.resume(state)
    assert len(io.commands) == 2 and round_of(io.commands[1]) == round_of(io.commands[0])


def test_a_rejected_iteration_puts_m_t_back_on_the_sampler(tmp_path):
    driver, tracker, io, state = driver_at_candidates(tmp_path, prompts=3, k=1)
    judged(tracker, "g1")
    settle(driver, state)
    published(tracker, f"{RUN}.m2.s1")
    settle(driver, state)
    it = state.iterations[0]
    assert io.promoted == [f"{RUN}.m2.s1"]
    it.output_version, it.promoted, it.gate_reason = f"{RUN}.m2", False, "rejected: worse"
    state.stage = it.stage = S.STAGE_PROMOTE
    driver.publish_status = lambda *a: None
    settle(driver, state)
    assert io.promoted == [f"{RUN}.m2.s1", f"{RUN}.m1"] and state.serving_version == f"{RUN}.m1"


def test_groups_per_version_is_refused_where_it_cannot_work():
    with pytest.raises(ConfigError, match="run.groups_per_version: versions within an iteration are for the online"):
        parse_config({"run": {"objective": "dpo", "groups_per_version": 2}})
    with pytest.raises(ConfigError, match="run.groups_per_version: not in Kubernetes mode"):
        parse_config({"run": {"objective": "grpo", "groups_per_version": 2},
                                "services": {"mode": "kubernetes"}})
