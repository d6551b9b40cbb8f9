"""The eval gate: is M_{t+1} good enough to serve in place of M_t?

On held-out prompts (AlpacaEval vicuna/selfinstruct, IFEval), both versions answer
(greedy); the gate measures IFEval accuracy, the head-to-head win rate of the candidate
judged by the configured judge version (ties count half), and the mean response length.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from srlm.config import EvalGateConfig
from srlm.judge.stage import Judge
from srlm.models.engines import SamplingParams
from srlm.recipe.evalsets import EvalPrompt, heldout_prompts, ifeval_check
from srlm.runtime.records import seed_for

log = logging.getLogger(__name__)


@dataclass
class GateResult:
    promote: bool
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)


def decide(metrics: dict[str, float], cfg: EvalGateConfig) -> tuple[bool, str]:
    """The promotion rule on the gate's metrics (pure)."""
    failures = []
    if metrics["win_rate"] < cfg.min_win_rate:
        failures.append(f"win rate {metrics['win_rate']:.2f} < {cfg.min_win_rate}")
    delta = metrics["ifeval_accuracy"] - metrics["ifeval_accuracy_current"]
    if metrics.get("ifeval_prompts", 0) and delta < cfg.min_ifeval_accuracy_delta:
        failures.append(f"IFEval accuracy fell by {-delta:.2f} (allowed {-cfg.min_ifeval_accuracy_delta:.2f})")
    if metrics["length_ratio"] > cfg.max_length_growth:
        failures.append(f"mean length grew x{metrics['length_ratio']:.2f} > x{cfg.max_length_growth}")
    summary = (f"win rate {metrics['win_rate']:.2f}, IFEval {metrics['ifeval_accuracy']:.2f} "
               f"(current {metrics['ifeval_accuracy_current']:.2f}), length x{metrics['length_ratio']:.2f}")
    if failures:
        return False, "rejected: " + "; ".join(failures) + f" ({summary})"
    return True, "promoted: " + summary


def _answers(judge: Judge, version: str, prompts: list[EvalPrompt], max_tokens: int) -> list[tuple[str, int]]:
    params = SamplingParams(n=1, temperature=0.0, top_p=1.0, max_tokens=max_tokens)
    _, results = judge.host.generate([[{"role": "user", "content": p.text}] for p in prompts], params,
                                     version_id=version)
    return [(r.completions[0].text, r.completions[0].num_tokens) for r in results]


def evaluate(judge: Judge, candidate: str, current: str, judge_version: str, cfg: EvalGateConfig,
             seed: int) -> GateResult:
    """Run the gate; ``judge.host`` loads each version in turn."""
    prompts = heldout_prompts(cfg.num_prompts, seed)
    new = _answers(judge, candidate, prompts, cfg.max_tokens)
    old = _answers(judge, current, prompts, cfg.max_tokens)
    wins = 0.0
    judge_params = judge.params(None, seed_for("gate", candidate, current, seed))
    for p, (new_text, _), (old_text, _) in zip(prompts, new, old):
        _, (a, b) = judge.score(p.text, [new_text, old_text], judge_params, version_id=judge_version)
        score_new = a.mean_score if a.num_parsed else 0.0
        score_old = b.mean_score if b.num_parsed else 0.0
        wins += 1.0 if score_new > score_old else 0.5 if score_new == score_old else 0.0
    ifeval = [(p, n, o) for p, (n, _), (o, _) in zip(prompts, new, old) if p.ifeval is not None]
    mean_len_new = sum(n for _, n in new) / max(len(new), 1)
    mean_len_old = sum(n for _, n in old) / max(len(old), 1)
    metrics = {
        "eval_prompts": float(len(prompts)),
        "win_rate": wins / max(len(prompts), 1),
        "ifeval_prompts": float(len(ifeval)),
        "ifeval_accuracy": sum(ifeval_check(p, n) for p, n, _ in ifeval) / max(len(ifeval), 1),
        "ifeval_accuracy_current": sum(ifeval_check(p, o) for p, _, o in ifeval) / max(len(ifeval), 1),
        "mean_length": mean_len_new,
        "mean_length_current": mean_len_old,
        "length_ratio": mean_len_new / max(mean_len_old, 1e-9),
    }
    promote, reason = decide(metrics, cfg)
    log.info("gate %s vs %s: %s", candidate, current, reason)
    return GateResult(promote, reason, metrics)
