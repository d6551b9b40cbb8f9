"""Preference pairs from judged candidates (paper section 2.4).

chosen = the candidate with the highest mean score, rejected = the one with the lowest;
a prompt whose best and worst scores tie (within ``tie_epsilon``) gives no pair, and so
does one with fewer than ``min_scored_candidates`` candidates whose score parsed. The score
is the candidate's reward (:mod:`srlm.recipe.rewards`): the self-judge's mean score under the
paper's weights, with a verifier or a reward model in the mix their weighted sum.

Ties between candidates are broken deterministically: chosen = higher score, then shorter,
then lower index; rejected = lower score, then longer, then lower index. Candidates whose
score is None (no judgment parsed) or not finite take no part.

With ``length_control`` (Meta-Rewarding, Wu et al. 2024) the chosen is the SHORTEST
candidate among those within ``length_control_margin`` of the top score, which counters the
length growth of iterated self-rewarding; it is never a candidate whose score does not beat
the rejected one by more than ``tie_epsilon``.

A candidate whose response carries a judge-style score statement or a plea to the judge
(``has_score_statement``, see :mod:`srlm.recipe.judge`) is never the chosen side: DPO would
teach the model to write verdicts into its answers. It may be the rejected one. When no other
candidate beats the rejected one by more than a tie, the prompt is ``dropped_injection``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

from srlm.config import PairsConfig

Decision = Literal["kept", "dropped_tie", "dropped_unparseable", "dropped_injection"]

# Mean scores are floats (4.0 - 3.9 > 0.1 in binary); differences this small are ties.
SCORE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class ScoredCandidate:
    """A candidate's index in its set, its mean judge score (None: no judgment parsed), length,
    and whether its response carries a score statement (then it is never chosen)."""

    index: int
    score: float | None
    num_tokens: int
    has_score_statement: bool = False


@dataclass(frozen=True)
class PairOutcome:
    """What became of one prompt: a pair (``kept``) or why not, in words."""

    decision: Decision
    reason: str
    chosen_index: int | None = None
    rejected_index: int | None = None

    @property
    def kept(self) -> bool:
        return self.decision == "kept"


def _describe(c: ScoredCandidate) -> str:
    return f"c{c.index} ({c.score:.2f}, {c.num_tokens} tokens)"


def build_pair(candidates: Sequence[ScoredCandidate], cfg: PairsConfig) -> PairOutcome:
    """Pick chosen and rejected among one prompt's candidates, or say why there is no pair."""
    scored = [c for c in candidates if c.score is not None and math.isfinite(c.score)]
    if len(scored) < cfg.min_scored_candidates:
        return PairOutcome(
            "dropped_unparseable",
            f"{len(scored)} of {len(candidates)} candidates have a parsed score; "
            f"min_scored_candidates is {cfg.min_scored_candidates}",
        )
    top = max(c.score for c in scored)  # type: ignore[type-var]
    # lowest score; among equals the longest, then the lowest index
    rejected = min(scored, key=lambda c: (c.score, -c.num_tokens, c.index))
    gap = top - rejected.score  # type: ignore[operator]
    if gap <= cfg.tie_epsilon + SCORE_TOLERANCE:
        return PairOutcome(
            "dropped_tie",
            f"best and worst scores tie: {top:.2f} vs {rejected.score:.2f} (tie_epsilon {cfg.tie_epsilon})",
        )
    # candidates that beat the rejected one by more than a tie
    better = [c for c in scored if c.score - rejected.score > cfg.tie_epsilon + SCORE_TOLERANCE]  # type: ignore[operator]
    excluded = sorted((c for c in better if c.has_score_statement), key=lambda c: c.index)
    better = [c for c in better if not c.has_score_statement]
    if not better:
        return PairOutcome(
            "dropped_injection",
            f"no candidate without a score statement beats the rejected {_describe(rejected)} by more than a tie; "
            f"never chosen (their responses address the judge): {', '.join(_describe(c) for c in excluded)}",
        )
    if cfg.length_control:
        best = max(c.score for c in better)  # type: ignore[type-var]
        near_top = [c for c in better if c.score >= best - cfg.length_control_margin - SCORE_TOLERANCE]  # type: ignore[operator]
        chosen = min(near_top, key=lambda c: (c.num_tokens, -c.score, c.index))  # type: ignore[operator]
        how = f"shortest within {cfg.length_control_margin} of the top score {best:.2f}"
    else:
        chosen = min(better, key=lambda c: (-c.score, c.num_tokens, c.index))  # type: ignore[operator]
        how = "highest score"
    skipped = f"; not chosen for a score statement: {', '.join(_describe(c) for c in excluded)}" if excluded else ""
    return PairOutcome(
        "kept",
        f"chosen {_describe(chosen)} ({how}) vs rejected {_describe(rejected)} (lowest score){skipped}",
        chosen.index,
        rejected.index,
    )
