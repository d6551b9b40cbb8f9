"""The eval gate: may M_{t+1} serve in place of M_t? Decided on the evaluation suite's evidence.

Both versions answer the held-out prompts (greedy); the suite measures IFEval accuracy and the
head-to-head win rate of the candidate against the serving version, judged by the FIXED judge
(``evaluation.judge``, never the candidate) in both orders, each with a paired test; in a
classification run also the task's held-out accuracy. The candidate is rejected when it is
significantly worse (p < ``alpha``) on any of them, or when its responses grow longer than
``max_length_growth``; otherwise it is "not worse" and promoted.
The reason, every figure and its interval are recorded with the decision.

On Kubernetes the gate runs as a Job of its own (``srlm train gate``, :func:`gate_from_command_line`)
with the evaluation engine's GPUs, and leaves its decision in the store beside the candidate,
where the controller reads it (:func:`stored_result`).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass, field

from srlm.config import EvalGateConfig, SRLMConfig
from srlm.evaluation.suite import EvalCache, EvaluationSuite, VersionEvaluation, gate_parts
from srlm.models.store import ModelStore

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


def store_result(store: ModelStore, candidate: str, serving: str, result: GateResult) -> None:
    """Keep the decision on ``candidate`` against ``serving`` beside the candidate's evaluations."""
    EvalCache(store).put(candidate, f"gate-{serving}", asdict(result))


def stored_result(store: ModelStore, candidate: str, serving: str) -> GateResult | None:
    """The decision a gate Job left for ``candidate`` against ``serving``; None while there is none."""
    data = EvalCache(store).get(candidate, f"gate-{serving}")
    return None if data is None else GateResult(**data)


def run_gate(config: SRLMConfig, store: ModelStore, candidate: str, serving: str, base: str) -> GateResult:
    """The gate on this process's evaluation engine (``base``: the run's M0, the fixed judge's
    default), its decision stored for the controller."""
    from srlm.runtime.model_host import ModelHost

    host = ModelHost("evaluation", config, store)
    try:
        result = evaluate(EvaluationSuite(config, store, host, base_version=base), candidate, serving,
                          config.eval_gate)
    finally:
        host.close()
    store_result(store, candidate, serving, result)
    return result


def gate_from_command_line(config: SRLMConfig, args: argparse.Namespace) -> int:
    """``srlm train gate --run-id R --iteration I --base-version SERVING --out-version CANDIDATE``:
    the gate as a Kubernetes Job runs it, with the run's config from the controller's command on
    srlm.commands. Node 0 of the round's pods gates; the others have nothing to do."""
    from srlm.controller.driver import version_id
    from srlm.runtime.runconfig import from_yaml
    from srlm.trainer.distributed import topology
    from srlm.trainer.service import job_command

    if topology(config.distributed).node_rank > 0:
        return 0
    cmd = job_command(config, f"{args.run_id}.i{args.iteration}.gate")
    run_config = from_yaml(cmd.config_yaml, config) if cmd else config
    result = run_gate(run_config, ModelStore(config.model_store.root), args.out_version, args.base_version,
                      base=version_id(args.run_id, 0))
    print(result.reason)
    return 0
