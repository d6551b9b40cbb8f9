"""Pure logic of the controller: the promotion rule and the tracker's counting by id."""

from __future__ import annotations

import pytest

from srlm.config import ConfigError, EvalGateConfig, parse_config
from srlm.controller.gate import decide
from srlm.evaluation.suite import VersionEvaluation
from srlm.controller.tracker import Tracker
from srlm.runtime.records import meta
from srlm.v1 import records_pb2

def estimate(value: float, half: float = 0.05, n: int = 100) -> dict:
    return {"value": value, "low": value - half, "high": value + half, "n": n}


def paired(diff: float, p: float) -> dict:
    return {"diff": diff, "low": diff - 0.05, "high": diff + 0.05, "p_value": p, "n": 100, "method": "paired_bootstrap"}


def evidence(ifeval_diff=0.0, ifeval_p=1.0, win=0.5, win_p=1.0, length=100.0, length_diff=0.0) -> VersionEvaluation:
    return VersionEvaluation(
        "cand", baseline="serving",
        metrics={"ifeval.prompt_strict": estimate(0.3 + ifeval_diff), "win_rate.vs_baseline": estimate(win),
                 "win_rate.vs_baseline_lc": estimate(win), "length.mean_tokens": estimate(length)},
        tests={"ifeval.prompt_strict": paired(ifeval_diff, ifeval_p), "win_rate.vs_baseline": paired(win - 0.5, win_p),
               "length.mean_tokens": paired(length_diff, 0.5)})




def test_gate_promotes_what_is_not_significantly_worse():
    # worse on both, but not significantly: noise never changes the serving version
    promote, reason = decide(evidence(ifeval_diff=-0.04, ifeval_p=0.30, win=0.45, win_p=0.20), EvalGateConfig())
    assert promote and reason.startswith("promoted (not significantly worse)")
    assert "p=0.300" in reason and "p=0.200" in reason


def test_gate_rejects_significantly_worse_and_names_every_failed_check():
    bad = evidence(ifeval_diff=-0.10, ifeval_p=0.01, win=0.30, win_p=0.001, length=250.0, length_diff=150.0)
    promote, reason = decide(bad, EvalGateConfig())
    assert not promote and reason.startswith("rejected")
    assert "IFEval prompt-level strict accuracy significantly worse (-0.100, p=0.010 < 0.05)" in reason
    assert "win rate 0.300 significantly below 0.5 (p=0.001 < 0.05)" in reason
    assert "mean length grew x2.50 > x1.2" in reason


def test_gate_alpha_and_drop_are_config():
    ev = evidence(ifeval_diff=-0.03, ifeval_p=0.04)
    assert not decide(ev, EvalGateConfig())[0]
    assert decide(ev, EvalGateConfig(alpha=0.01))[0]
    assert decide(ev, EvalGateConfig(max_ifeval_drop=0.05))[0]


def test_gate_of_a_classification_run_also_weighs_its_accuracy():
    ev = evidence()
    ev.metrics["classification.accuracy"] = estimate(0.62)
    ev.tests["classification.accuracy"] = paired(-0.08, 0.01)
    promote, reason = decide(ev, EvalGateConfig())
    assert not promote and "classification accuracy significantly worse (-0.080, p=0.010 < 0.05)" in reason
    ev.tests["classification.accuracy"] = paired(-0.02, 0.40)
    promote, reason = decide(ev, EvalGateConfig())
    assert promote and "classification accuracy 0.620 [0.570, 0.670], diff -0.020 p=0.400" in reason


def test_gate_without_evidence_rejects():
    ev = VersionEvaluation("cand", metrics={"length.mean_tokens": estimate(10.0)})
    promote, reason = decide(ev, EvalGateConfig())
    assert not promote and "no IFEval or head-to-head evidence" in reason


def test_gate_needs_enough_prompts_at_startup():
    with pytest.raises(ConfigError, match="eval_gate.min_prompts"):
        parse_config({"evaluation": {"ifeval_prompts": 10, "alpacaeval_prompts": 5}}, environ={})
    parse_config({"evaluation": {"ifeval_prompts": 10, "alpacaeval_prompts": 5}, "eval_gate": {"min_prompts": 15}},
                 environ={})


def judgment(prompt_id: str, kept: bool, iteration: int = 1) -> records_pb2.JudgmentSet:
    return records_pb2.JudgmentSet(
        meta=meta("r", iteration, "r.m1", prompt_id), prompt_id=prompt_id,
        decision=records_pb2.PAIR_DECISION_KEPT if kept else records_pb2.PAIR_DECISION_DROPPED_TIE,
        pair_id=f"pair-{prompt_id}" if kept else "")


def test_tracker_counts_each_id_once():
    t = Tracker()
    for pid in ["p1", "p2", "p1"]:  # p1 replayed
        t.apply("prompts", records_pb2.Prompt(meta=meta("r", 1, "r.m1", pid)))
    t.apply("judgments", judgment("p1", True))
    t.apply("judgments", judgment("p2", False))
    t.apply("judgments", judgment("p1", True))  # replay
    t.apply("judgments", judgment("p3", True, iteration=2))  # another iteration
    view = t.iteration("r", 1)
    assert view.prompts == {"p1", "p2"}
    assert view.kept_pair_ids() == ["pair-p1"]
    assert view.duplicates == 2
    assert t.progress("r", 1)["judgment_sets"] == 2


def test_tracker_reads_prompt_total_from_promptgen_event():
    t = Tracker()
    t.apply("events", records_pb2.RunEvent(run_id="r", iteration=1, stage=records_pb2.STAGE_PROMPTS,
                                           progress={"prompts": 7, "prompts_done": 1}))
    assert t.iteration("r", 1).prompts_total == 7
    assert t.progress("r", 1)["prompts_total"] == 7


def test_engine_utilisation_is_the_union_of_busy_spans_over_their_wall_time():
    from srlm.controller.report import engine_work, merged, utilisation

    # records of one engine call share a span; overlapping replicas count once
    assert merged([(5, 6), (0, 2), (0, 2), (1, 3)]) == [(0, 3), (5, 6)]
    u = utilisation([(0, 2), (0, 2), (1, 3), (5, 6)])
    assert u == {"busy_seconds": 4, "wall_seconds": 6, "utilisation": 4 / 6, "records": 4}

    def record(iteration: int, start: float | None, end: float = 0.0):
        r = records_pb2.CandidateSet(meta=meta("r", iteration, "v", f"c{start}"))
        if start is not None:  # a record made without the engine has no work
            r.meta.work.instance = "pod/1"
            r.meta.work.started_at.FromNanoseconds(int(start * 1e9))
            r.meta.work.ended_at.FromNanoseconds(int(end * 1e9))
        return r

    work = engine_work({"sampler": [record(1, 10.0, 12.5), record(1, None), record(2, 20.0, 21.0)]})
    assert work == {"sampler": {1: [(10.0, 12.5)], 2: [(20.0, 21.0)]}}
