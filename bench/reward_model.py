"""Benchmark: reward-model training throughput and memory of srlm's trainer vs TRL's RewardTrainer with its defaults.

Both train a one-output sequence-classification head on SmolLM2-135M (M0) for one epoch on the
same synthetic preference pairs (``bench/dpo.py``'s), on the CPU (or a GPU if there is one):
  * srlm: ``srlm.trainer.reward_model.train_reward_model`` with srlm's reward-model config (TRL's
    RewardConfig values; srlm's checkpointing of every 2nd layer, bf16 autocast) and no held-out
    pairs, so both train on every pair;
  * TRL: ``trl.RewardTrainer`` with TRL's defaults (batch 8, lr 1e-4, bf16 autocast, gradient
    checkpointing of every layer) and only what the comparison fixes: one epoch, max length 512,
    ``use_cpu`` on a CPU machine, the seed.
Each runs in its own process (its own peak RSS). Tokens are the non-padding tokens of the chosen
and rejected sequences; rates as in ``bench/dpo.py``: end to end (from the call to the last
step) and steps (optimizer steps after the first).

    python bench/reward_model.py [--pairs 96] [--response-words 150] [--only srlm|trl] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.dpo import synthetic_pairs  # noqa: E402
from bench.trainer_runs import (  # noqa: E402
    Meter, add_run_arguments, base_model_store, parse_overrides, child, print_comparison, run_children,
    step_meter)

BATCH, MAX_LENGTH = 8, 512


def run_srlm(store, pairs: list[dict], work: Path, overrides: dict) -> dict:
    from srlm.config import RewardModelConfig
    from srlm.trainer.reward_model import train_reward_model

    cfg = RewardModelConfig(**{"max_length": MAX_LENGTH, "held_out_fraction": 0.0, "save_steps": 10_000,
                               "precision": "bf16", **overrides})  # bf16 autocast as TRL's default
    version = f"bench-srlm-{os.getpid()}"
    meter = Meter()
    manifest = train_reward_model(store, "m0", version, pairs, cfg, run_id="bench", work_dir=work / "srlm", seed=42,
                                  callbacks=[step_meter(meter)])
    store.delete(version)
    return {**meter.rates(), "loss": manifest.metrics.get("loss")}


def run_trl(store, pairs: list[dict], work: Path, overrides: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from srlm.trainer.data import dpo_examples

    path = store.path("m0")
    args = RewardConfig(output_dir=str(work / "trl"), num_train_epochs=1, max_length=MAX_LENGTH,
                        use_cpu=not torch.cuda.is_available(), seed=42, report_to=[], disable_tqdm=True,
                        save_strategy="no", include_num_input_tokens_seen="non_padding")  # counting only
    meter = Meter()
    trainer = RewardTrainer(model=AutoModelForSequenceClassification.from_pretrained(path, num_labels=1), args=args,
                            train_dataset=Dataset.from_list(dpo_examples(pairs)),
                            processing_class=AutoTokenizer.from_pretrained(path), callbacks=[step_meter(meter)])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {**meter.rates(), "loss": losses[-1] if losses else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=96, help=f"one epoch: pairs / {BATCH} optimizer steps")
    parser.add_argument("--response-words", type=int, default=150, help="~1.2 tokens a word")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a reward_model config value for srlm's run (YAML value)")
    add_run_arguments(parser)
    args = parser.parse_args()
    if args.child:
        return child(args, {"srlm": run_srlm, "trl": run_trl}, synthetic_pairs(args.pairs, args.response_words),
                     parse_overrides(args.set))

    with base_model_store(args.store, "bench-rm-store-") as store:
        print(f"{args.pairs} pairs of ~{args.response_words}-word answers, batch {BATCH}, max length {MAX_LENGTH}, "
              f"one epoch = {args.pairs // BATCH} optimizer steps each")
        results = run_children(__file__, args, store, ["--pairs", str(args.pairs), "--response-words",
                                                       str(args.response_words), *(f"--set={kv}" for kv in args.set)])

    print_comparison(results, {"srlm": "srlm train_reward_model", "trl": "TRL RewardTrainer defaults"})


if __name__ == "__main__":
    main()
