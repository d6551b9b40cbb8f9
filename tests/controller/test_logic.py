"""Pure logic of the controller: the promotion rule and the tracker's counting by id."""

from __future__ import annotations

from srlm.config import EvalGateConfig
from srlm.controller.gate import decide
from srlm.controller.tracker import Tracker
from srlm.runtime.records import meta
from srlm.v1 import records_pb2

GOOD = {"win_rate": 0.6, "ifeval_accuracy": 0.3, "ifeval_accuracy_current": 0.3, "ifeval_prompts": 4,
        "length_ratio": 1.1}


def test_gate_promotes_when_every_check_passes():
    promote, reason = decide(GOOD, EvalGateConfig())
    assert promote and reason.startswith("promoted")


def test_gate_names_every_failed_check():
    bad = {**GOOD, "win_rate": 0.2, "ifeval_accuracy": 0.1, "length_ratio": 2.0}
    promote, reason = decide(bad, EvalGateConfig())
    assert not promote
    assert "win rate 0.20 < 0.5" in reason
    assert "IFEval accuracy fell by 0.20" in reason
    assert "length grew x2.00" in reason


def test_gate_ignores_ifeval_without_ifeval_prompts():
    promote, _ = decide({**GOOD, "ifeval_prompts": 0, "ifeval_accuracy": 0.0}, EvalGateConfig())
    assert promote


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
