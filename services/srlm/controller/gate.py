"""The eval gate: may M_{t+1} serve in place of M_t? Decided on the evaluation suite's evidence.

Both versions answer the held-out prompts (greedy); the suite measures IFEval accuracy and the
head-to-head win rate of the candidate against the serving version, judged by the FIXED judge
(``evaluation.judge``, never the candidate) in both orders, each with a paired test; in a
classification run also the task's held-out accuracy. The candidate is rejected when it is
significantly worse (p < ``alpha``) on any of them, or when its responses grow longer than
``max_length_growth``; otherwise it is "not worse" and promoted.
The reason, every figure and its interval are recorded with the decision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from srlm.config import EvalGateConfig
from srlm.evaluation.suite import EvaluationSuite, VersionEvaluation, gate_parts

log = logging.getLogger(__name__)


@dataclass
class GateResult:
    promote: bool
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)


def _interval(e: dict) -> str:
    return f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"


def decide(ev: VersionEvaluation, cfg: EvalGateConfig) -> tuple[bool, str]:
    """The promotion rule on the suite's figures against the serving version (pure)."""
    failures, summary = [], []
    ifeval = ev.tests.get("ifeval.prompt_strict")
    if ifeval is not None:
        summary.append(f"IFEval strict {_interval(ev.metrics['ifeval.prompt_strict'])}, "
                       f"diff {ifeval['diff']:+.3f} p={ifeval['p_value']:.3f}")
        if ifeval["diff"] < -cfg.max_ifeval_drop and ifeval["p_value"] < cfg.alpha:
            failures.append(f"IFEval prompt-level strict accuracy significantly worse "
                            f"({ifeval['diff']:+.3f}, p={ifeval['p_value']:.3f} < {cfg.alpha})")
    win = ev.tests.get("win_rate.vs_baseline")
    if win is not None:
        rate = ev.metrics["win_rate.vs_baseline"]
        summary.append(f"win rate {_interval(rate)} p={win['p_value']:.3f} (LC "
                       f"{ev.metrics['win_rate.vs_baseline_lc']['value']:.3f})")
        if rate["value"] < cfg.min_win_rate and win["p_value"] < cfg.alpha:
            failures.append(f"win rate {rate['value']:.3f} significantly below {cfg.min_win_rate} "
                            f"(p={win['p_value']:.3f} < {cfg.alpha})")
    accuracy = ev.tests.get("classification.accuracy")
    if accuracy is not None:  # a classification run: its task's held-out accuracy too
        summary.append(f"classification accuracy {_interval(ev.metrics['classification.accuracy'])}, "
                       f"diff {accuracy['diff']:+.3f} p={accuracy['p_value']:.3f}")
        if accuracy["diff"] < 0 and accuracy["p_value"] < cfg.alpha:
            failures.append(f"classification accuracy significantly worse ({accuracy['diff']:+.3f}, "
                            f"p={accuracy['p_value']:.3f} < {cfg.alpha})")
    length = ev.tests.get("length.mean_tokens")
    if length is not None:
        mine = ev.value("length.mean_tokens")
        ratio = mine / max(mine - length["diff"], 1e-9)
        summary.append(f"length x{ratio:.2f}")
        if ratio > cfg.max_length_growth:
            failures.append(f"mean length grew x{ratio:.2f} > x{cfg.max_length_growth}")
    if ifeval is None and win is None:
        failures.append("no IFEval or head-to-head evidence against the serving version")
    text = "; ".join(summary)
    if failures:
        return False, "rejected: " + "; ".join(failures) + f" ({text})"
    return True, "promoted (not significantly worse): " + text


def evaluate(suite: EvaluationSuite, candidate: str, serving: str, cfg: EvalGateConfig) -> GateResult:
    """Run the gate's parts of the suite (cached) and decide."""
    ev = suite.evaluate(candidate, baseline=serving, parts=gate_parts(suite.config))
    prompts = int(ev.metrics["length.mean_tokens"]["n"])
    if prompts < cfg.min_prompts:
        raise ValueError(f"eval_gate.min_prompts is {cfg.min_prompts} but the suite has {prompts} held-out prompts")
    promote, reason = decide(ev, cfg)
    log.info("gate %s vs %s: %s", candidate, serving, reason)
    return GateResult(promote, reason, {**ev.flat(), "eval_prompts": float(prompts)})
