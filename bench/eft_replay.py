"""How well does M1 judge, for a given SFT recipe? Replays a run's recorded M0 -> M1 SFT data,
or builds it afresh from the config.

With ``--run``, trains the run's M0 on the run's SFT dataset (``<store>/datasets/<run>.m1.sft.jsonl``,
IFT + EFT rows as the trainer got them) with ``--epochs`` and, with ``--whole-sentences``, the
EFT rationales cut back to their last whole sentence (what ``judge.forced_verdict`` now does when
EFT data is built). The result goes to a scratch store (a copy of the base there), never to the
run's. Without ``--run``, M0 is imported into the scratch store and the SFT rows are built there
as the trainer builds them (``build_sft_rows``: IFT plus EFT judged by M0, whole sentences
already), so EFT settings (``SRLM_SEED_DATA__*`` variables) can be tried without a run; SFT settings
(``SRLM_SFT__*``, e.g. ``SRLM_SFT__DROPOUT=0``) train another M1 on the same rows.
Then the suite's ``judge`` part on the held-out judge set, once per ``--judge-max-tokens``:
free-text parse rate, pairwise accuracy and Spearman, with 95% bootstrap intervals, beside
M0's and the run's own M1's, and each M1's paired difference in pairwise accuracy from M0.
``SRLM_JUDGE__VERDICT_READOUT=expected`` reads each verdict as the judge's expected score.

    python bench/eft_replay.py --config configs/small.yaml [--run RUN] [--epochs 3] [--whole-sentences]
                               [--judge-max-tokens 64,128] [--scratch /tmp/srlm-eft-replay]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from srlm.config import SRLMConfig, load_config
from srlm.evaluation.suite import EvaluationSuite, VersionEvaluation
from srlm.models.importer import import_base_model
from srlm.models.store import DatasetNotFound, ModelStore
from srlm.recipe.judge import complete_sentences
from srlm.runtime.model_host import ModelHost
from srlm.trainer.sft import train_sft
from srlm.trainer.sft_data import build_sft_rows

FIGURES = ("judge.parse_rate", "judge.pairwise_accuracy", "judge.spearman")


def replayed_rows(path: Path, whole_sentences: bool) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if whole_sentences:
        for r in rows:
            if r["kind"] == "eft":
                rationale, _, verdict = r["completion"][0]["content"].rpartition("\nScore:")
                r["completion"] = [{"role": "assistant",
                                    "content": complete_sentences(rationale) + "\nScore:" + verdict}]
    return rows


def built_rows(store: ModelStore, config: SRLMConfig, base: str) -> list[dict]:
    """The SFT rows the trainer would build from ``base`` with this config (built once per store)."""
    try:
        return store.get_dataset("built.sft")
    except DatasetNotFound:
        pass
    host = ModelHost("trainer", config, store)
    try:
        host.load(base)
        rows, stats = build_sft_rows(host, config, config.run.seed)
    finally:
        host.close()
    print("built SFT rows:", json.dumps(stats))
    store.put_dataset("built.sft", rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/small.yaml")
    parser.add_argument("--run", help="replay this run's recorded rows (default: build them from M0)")
    parser.add_argument("--epochs", type=int, default=None, help="default: sft.num_epochs")
    parser.add_argument("--whole-sentences", action="store_true", help="with --run (built rows already are)")
    parser.add_argument("--judge-max-tokens", default=None, help="comma-separated; default: judge.max_tokens")
    parser.add_argument("--scratch", default="/tmp/srlm-eft-replay")
    args = parser.parse_args()

    config = load_config(args.config)
    store = ModelStore(config.model_store.root)
    scratch = ModelStore(args.scratch)
    sft = config.sft.model_copy(update={"num_epochs": args.epochs or config.sft.num_epochs})
    name = (f"{'replay' if args.run else 'built'}-e{sft.num_epochs:g}-dropout{sft.dropout:g}"
            f"{'-whole' if args.whole_sentences else ''}")
    if args.run:
        base, recorded = f"{args.run}.m0", f"{args.run}.m1"
        # the base with its judge set (built once) and the run's own M1, the baseline
        for sub in (f"versions/{base}", f"evaluations/{base}", f"versions/{recorded}", f"evaluations/{recorded}"):
            if (store.root / sub).exists() and not (scratch.root / sub).exists():
                shutil.copytree(store.root / sub, scratch.root / sub)
        rows = replayed_rows(store.datasets_dir / f"{args.run}.m1.sft.jsonl", args.whole_sentences)
    else:
        base, recorded = "m0", None
        import_base_model(scratch, version_id=base)
        rows = built_rows(scratch, config, base)
    print(f"{sum(r['kind'] == 'eft' for r in rows)} EFT rows of {len(rows)}")
    start = time.perf_counter()
    if not scratch.exists(name):
        train_sft(scratch, base, name, rows, sft, run_id=None, work_dir=scratch.root / f"work-{name}",
                  seed=config.run.seed)
    print(f"SFT {name}: {len(rows)} rows, {sft.num_epochs} epochs, {time.perf_counter() - start:.0f} s")

    print("\n| version | judge.max_tokens | judge.verdict_readout | " + " | ".join(FIGURES)
          + f" | pairwise accuracy vs {base}: diff, p |")
    print("|---|---|---|" + "---|" * (len(FIGURES) + 1))
    budgets = args.judge_max_tokens.split(",") if args.judge_max_tokens else [str(config.judge.max_tokens)]
    for budget in budgets:
        cfg = config.model_copy(update={"judge": config.judge.model_copy(update={"max_tokens": int(budget)})})
        host = ModelHost("evaluation", cfg, scratch)
        suite = EvaluationSuite(cfg, scratch, host, base_version=base)
        for version in [v for v in (base, recorded, name) if v]:
            ev: VersionEvaluation = suite.evaluate(version, baseline=None if version == base else base,
                                                   parts=("judge",))
            cells = [f"{ev.value(f):.3f} [{ev.metrics[f]['low']:.3f}, {ev.metrics[f]['high']:.3f}]" if f in ev.metrics
                     else "-" for f in FIGURES]
            test = ev.tests.get("judge.pairwise_accuracy")
            cells.append(f"{test['diff']:+.3f}, p={test['p_value']:.3f}" if test else "-")
            print(f"| {version} | {budget} | {cfg.judge.verdict_readout} | " + " | ".join(cells) + " |", flush=True)
        host.close()


if __name__ == "__main__":
    main()
