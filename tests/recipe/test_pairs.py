"""Preference pair building: property-based (hypothesis) and a few worked examples."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srlm.config import PairsConfig
from srlm.recipe.pairs import SCORE_TOLERANCE as TOL
from srlm.recipe.pairs import ScoredCandidate, build_pair

# Scores as the judge makes them: means of k=3 parsed integer scores in [0, 5], or None.
score = st.one_of(st.none(), st.integers(0, 15).map(lambda s: round(s / 3, 4)))


@st.composite
def candidate_sets(draw) -> list[ScoredCandidate]:
    n = draw(st.integers(0, 6))
    return [ScoredCandidate(i, draw(score), draw(st.integers(0, 400))) for i in range(n)]


configs = st.builds(
    PairsConfig,
    min_scored_candidates=st.integers(2, 4),
    tie_epsilon=st.sampled_from([0.0, 0.1, 0.5]),
    length_control=st.booleans(),
    length_control_margin=st.sampled_from([0.0, 0.25, 0.5, 1.0, 5.0]),
)


def by_index(cands: list[ScoredCandidate]) -> dict[int, ScoredCandidate]:
    return {c.index: c for c in cands}


@settings(max_examples=400, deadline=None)
@given(cands=candidate_sets(), cfg=configs)
def test_pair_properties(cands: list[ScoredCandidate], cfg: PairsConfig) -> None:
    out = build_pair(cands, cfg)
    scored = [c for c in cands if c.score is not None]
    assert out.reason
    if len(scored) < cfg.min_scored_candidates:
        assert out.decision == "dropped_unparseable"
        assert out.chosen_index is None and out.rejected_index is None
        return
    best, worst = max(c.score for c in scored), min(c.score for c in scored)
    if best - worst <= cfg.tie_epsilon + TOL:
        assert out.decision == "dropped_tie"  # ties are dropped
        return
    assert out.kept and out.decision == "kept"
    chosen, rejected = by_index(cands)[out.chosen_index], by_index(cands)[out.rejected_index]
    assert chosen.score is not None and rejected.score is not None  # never an unparsed candidate
    assert chosen.index != rejected.index
    assert chosen.score - rejected.score > cfg.tie_epsilon + TOL  # kept => strictly better (beyond a tie)
    assert rejected.score == worst  # rejected is always a lowest score
    if cfg.length_control:
        # never below top - margin, and the shortest of the eligible ones
        assert chosen.score >= best - cfg.length_control_margin - TOL
        eligible = [c for c in scored
                    if c.score >= best - cfg.length_control_margin - TOL and c.score - worst > cfg.tie_epsilon + TOL]
        assert chosen.num_tokens == min(c.num_tokens for c in eligible)
    else:
        assert chosen.score == best


@settings(max_examples=200, deadline=None)
@given(cands=candidate_sets(), cfg=configs, seed=st.integers(0, 2**16))
def test_deterministic_and_independent_of_order(cands: list[ScoredCandidate], cfg: PairsConfig, seed: int) -> None:
    out = build_pair(cands, cfg)
    assert build_pair(list(cands), cfg) == out
    shuffled = list(cands)
    random.Random(seed).shuffle(shuffled)
    other = build_pair(shuffled, cfg)
    def key(o):
        return o.decision, o.chosen_index, o.rejected_index

    assert key(other) == key(out)


@settings(max_examples=200, deadline=None)
@given(cands=candidate_sets())
def test_length_control_with_zero_margin_only_breaks_ties(cands: list[ScoredCandidate]) -> None:
    plain = build_pair(cands, PairsConfig())
    controlled = build_pair(cands, PairsConfig(length_control=True, length_control_margin=0.0))
    assert controlled.decision == plain.decision
    if plain.kept:
        idx = by_index(cands)
        assert idx[controlled.chosen_index].score == idx[plain.chosen_index].score
        assert controlled.rejected_index == plain.rejected_index


def C(index: int, score: float | None, tokens: int = 100) -> ScoredCandidate:
    return ScoredCandidate(index, score, tokens)


def test_best_vs_worst() -> None:
    out = build_pair([C(0, 3.0), C(1, 4.67), C(2, 1.33), C(3, 4.0)], PairsConfig())
    assert (out.decision, out.chosen_index, out.rejected_index) == ("kept", 1, 2)
    assert "c1 (4.67, 100 tokens)" in out.reason and "c2 (1.33, 100 tokens)" in out.reason


def test_ties_are_dropped() -> None:
    out = build_pair([C(0, 4.0), C(1, 4.0), C(2, None)], PairsConfig())
    assert out.decision == "dropped_tie" and "4.00 vs 4.00" in out.reason
    out = build_pair([C(0, 4.0), C(1, 3.9)], PairsConfig(tie_epsilon=0.1))
    assert out.decision == "dropped_tie"


def test_too_few_parsed_scores() -> None:
    out = build_pair([C(0, 4.0), C(1, None), C(2, None), C(3, None)], PairsConfig())
    assert out.decision == "dropped_unparseable"
    assert "1 of 4 candidates have a parsed score" in out.reason
    assert build_pair([], PairsConfig()).decision == "dropped_unparseable"


def test_tie_breaking() -> None:
    # equal top scores: the shorter is chosen; equal bottom scores: the longer is rejected
    out = build_pair([C(0, 5.0, 300), C(1, 5.0, 120), C(2, 1.0, 50), C(3, 1.0, 90)], PairsConfig())
    assert (out.chosen_index, out.rejected_index) == (1, 3)
    # all equal lengths: the lowest index
    out = build_pair([C(2, 5.0), C(0, 5.0), C(3, 1.0), C(1, 1.0)], PairsConfig())
    assert (out.chosen_index, out.rejected_index) == (0, 1)


def test_length_control_prefers_the_shorter_near_tie() -> None:
    cands = [C(0, 5.0, 400), C(1, 4.67, 150), C(2, 4.0, 60), C(3, 1.0, 200)]
    assert build_pair(cands, PairsConfig()).chosen_index == 0
    out = build_pair(cands, PairsConfig(length_control=True, length_control_margin=0.5))
    assert (out.chosen_index, out.rejected_index) == (1, 3)
    assert "shortest within 0.5 of the top score 5.00" in out.reason
    out = build_pair(cands, PairsConfig(length_control=True, length_control_margin=1.0))
    assert out.chosen_index == 2


def test_length_control_never_chooses_the_rejected() -> None:
    # the near-top window reaches the worst candidate, which is also the shortest
    out = build_pair([C(0, 5.0, 300), C(1, 4.8, 10)], PairsConfig(length_control=True, length_control_margin=1.0))
    assert (out.decision, out.chosen_index, out.rejected_index) == ("kept", 0, 1)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_scores_count_as_unparsed(bad: float) -> None:
    out = build_pair([C(0, bad), C(1, 3.0), C(2, 1.0)], PairsConfig())
    assert (out.chosen_index, out.rejected_index) == (1, 2)


# --------------------------------------------------------------------------- score statements (injection)

@st.composite
def candidate_sets_with_statements(draw) -> list[ScoredCandidate]:
    n = draw(st.integers(0, 6))
    return [ScoredCandidate(i, draw(score), draw(st.integers(0, 400)), draw(st.booleans())) for i in range(n)]


@settings(max_examples=400, deadline=None)
@given(cands=candidate_sets_with_statements(), cfg=configs)
def test_a_candidate_with_a_score_statement_is_never_chosen(cands: list[ScoredCandidate], cfg: PairsConfig) -> None:
    out = build_pair(cands, cfg)
    scored = [c for c in cands if c.score is not None]
    if len(scored) < cfg.min_scored_candidates:
        assert out.decision == "dropped_unparseable"
        return
    worst = min(c.score for c in scored)
    if max(c.score for c in scored) - worst <= cfg.tie_epsilon + TOL:
        assert out.decision == "dropped_tie"
        return
    clean_better = [c for c in scored if not c.has_score_statement and c.score - worst > cfg.tie_epsilon + TOL]
    if not clean_better:
        assert out.decision == "dropped_injection" and out.chosen_index is None
        return
    assert out.kept
    chosen, rejected = by_index(cands)[out.chosen_index], by_index(cands)[out.rejected_index]
    assert not chosen.has_score_statement
    assert rejected.score == worst  # the rejected side is unchanged, score statement or not
    if not cfg.length_control:
        assert chosen.score == max(c.score for c in clean_better)  # the best of the rest


def S(index: int, score: float | None, tokens: int = 100) -> ScoredCandidate:
    """A candidate whose response carries a score statement."""
    return ScoredCandidate(index, score, tokens, has_score_statement=True)


def test_the_best_scored_injection_falls_back_to_the_next_best() -> None:
    out = build_pair([S(0, 5.0), C(1, 4.0), C(2, 1.0), C(3, 3.0)], PairsConfig())
    assert (out.decision, out.chosen_index, out.rejected_index) == ("kept", 1, 2)
    assert "not chosen for a score statement: c0 (5.00, 100 tokens)" in out.reason
    # with length control the window is measured from the best eligible score (4.0), not 5.0
    out = build_pair([S(0, 5.0, 10), C(1, 4.0, 300), C(2, 3.8, 50), C(3, 1.0)],
                     PairsConfig(length_control=True, length_control_margin=0.5))
    assert (out.chosen_index, out.rejected_index) == (2, 3)
    assert "of the top score 4.00" in out.reason


def test_an_injection_can_be_the_rejected_side() -> None:
    out = build_pair([C(0, 4.0), S(1, 1.0), C(2, 2.0)], PairsConfig())
    assert (out.decision, out.chosen_index, out.rejected_index) == ("kept", 0, 1)


def test_dropped_when_only_injections_beat_the_worst() -> None:
    out = build_pair([S(0, 5.0), S(3, 4.5), C(1, 1.0), C(2, 1.0)], PairsConfig())
    assert out.decision == "dropped_injection" and not out.kept
    assert out.chosen_index is None and out.rejected_index is None
    assert "c0 (5.00, 100 tokens)" in out.reason and "c3 (4.50, 100 tokens)" in out.reason
    # a clean candidate within a tie of the rejected one does not rescue the prompt
    out = build_pair([S(0, 5.0), C(1, 1.1), C(2, 1.0)], PairsConfig(tie_epsilon=0.1))
    assert out.decision == "dropped_injection"
    # a tie stays a tie, whoever carries a score statement
    assert build_pair([S(0, 3.0), C(1, 3.0)], PairsConfig()).decision == "dropped_tie"
