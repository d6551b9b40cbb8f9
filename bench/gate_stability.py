"""How often does the eval gate change its decision when only the evaluation seed changes?

For one candidate and its serving version (e.g. M2 and M1 of a run), the gate's part of the
suite (IFEval + fixed-judge head-to-head, at the config's sizes) is run with ``--seeds``
different ``evaluation.seed`` values: each seed draws other held-out prompts and other
bootstrap resamples. Prints each seed's decision, its figures and p-values, and the flip
count: a decision one prompt can flip is not a decision.

    python bench/gate_stability.py --config configs/small.yaml --candidate RUN.m2 --serving RUN.m1 [--seeds 5]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from srlm.config import load_config
from srlm.controller.gate import evaluate
from srlm.evaluation.suite import EvaluationSuite
from srlm.models.store import ModelStore
from srlm.runtime.model_host import ModelHost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/small.yaml")
    parser.add_argument("--candidate", required=True)
    parser.add_argument("--serving", required=True)
    parser.add_argument("--base", default=None, help="the fixed judge's version (default: the run's M0)")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()

    config = load_config(args.config)
    store = ModelStore(config.model_store.root)
    base = args.base or args.candidate.rsplit(".", 1)[0] + ".m0"
    host = ModelHost("evaluation", config, store)
    decisions = []
    print("| seed | decision | IFEval strict (cand) | diff, p | win rate vs serving | p | seconds |")
    print("|---|---|---|---|---|---|---|")
    for seed in range(args.seeds):
        cfg = config.model_copy(update={"evaluation": config.evaluation.model_copy(update={"seed": seed})})
        suite = EvaluationSuite(cfg, store, host, base_version=base)
        start = time.perf_counter()
        result = evaluate(suite, args.candidate, args.serving, cfg.eval_gate)
        m = result.metrics
        decisions.append(result.promote)
        print(f"| {seed} | {'promote' if result.promote else 'reject'} | {m['ifeval.prompt_strict']:.3f} | "
              f"{m['vs_baseline.ifeval.prompt_strict_diff']:+.3f}, {m['vs_baseline.ifeval.prompt_strict_p']:.3f} | "
              f"{m['win_rate.vs_baseline']:.3f} [{m['win_rate.vs_baseline_low']:.3f}, "
              f"{m['win_rate.vs_baseline_high']:.3f}] | {m['vs_baseline.win_rate.vs_baseline_p']:.3f} | "
              f"{time.perf_counter() - start:.0f} |", flush=True)
    counts = Counter(decisions)
    majority = counts.most_common(1)[0][0]
    print(f"\n{args.candidate} vs {args.serving}: {counts[True]} promote, {counts[False]} reject over "
          f"{args.seeds} seeds; {sum(d != majority for d in decisions)} differ from the majority decision")
    host.close()


if __name__ == "__main__":
    main()
