"""Benchmark: DPO training throughput and memory of srlm's trainer vs TRL with its defaults.

Both train SmolLM2-135M (M0) for one epoch on the same synthetic preference pairs, batch 2
(no gradient accumulation), max length 512, on the CPU (or a GPU if there is one):
  * srlm: ``srlm.trainer.dpo.train_dpo`` with the paper's DPO config (beta 0.1, lr 1e-6 -> 1e-7,
    dropout 0.1), gradient checkpointing of every 2nd layer, bf16 autocast, reference log-probs
    precomputed;
  * TRL: ``trl.DPOTrainer`` with TRL's defaults (bf16 autocast, gradient checkpointing, dropout
    disabled, a second model as the reference) and only what the comparison fixes: one epoch,
    batch 2, max length 512, ``use_cpu`` on a CPU machine, the same seed.

Each runs in its own process, so its peak RSS is its own. Tokens are the non-padding tokens
of the chosen and rejected sequences trained on. Two rates:
  * end to end: from the call (srlm: ``train_dpo``; TRL: building the trainer) to the last
    optimizer step, so model loading, tokenization and reference scoring count; the final
    checkpoint and publishing do not;
  * steps: optimizer steps after the first (warm-up) only; srlm's reference scoring happened
    before them, TRL's happens inside them.

    python bench/dpo.py [--pairs 16] [--response-words 150] [--only srlm|srlm-full-head|trl]
                        [--set dropout=0 ...]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.trainer_runs import (  # noqa: E402
    WORDS, Meter, add_run_arguments, base_model_store, parse_overrides, child, print_comparison, run_children,
    run_trl_trainer, with_full_lm_head)

BATCH = 2


def synthetic_pairs(n: int, response_words: int, seed: int = 0) -> list[dict]:
    """Deterministic pairs: a ~40-word prompt, a long chosen and a shorter rejected answer."""
    rng = random.Random(seed)

    def text(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."

    return [{"pair_id": f"bench-{i}", "prompt": f"Question {i}: {text(40)}",
             "chosen": text(response_words), "rejected": text(response_words * 3 // 4)} for i in range(n)]


def run_srlm(store, pairs: list[dict], work: Path, overrides: dict) -> dict:
    from srlm.config import DPOConfig
    from srlm.trainer.dpo import train_dpo

    def progress(step, total, logs):
        if "loss" in logs:
            meter.mark(logs["num_input_tokens_seen"])

    # bf16 autocast as TRL's default, whatever this CPU computes natively: the same maths on both sides
    cfg = DPOConfig(**{"batch_size": BATCH, "per_device_batch_size": BATCH, "max_length": 512, "save_steps": 10_000,
                       "precision": "bf16", **overrides})
    version = f"bench-srlm-{os.getpid()}"  # a new version: an existing one would be returned untrained
    meter = Meter()
    manifest = train_dpo(store, "m0", version, pairs, cfg, run_id="bench", iteration=2, work_dir=work / "srlm",
                         seed=42, progress_cb=progress)
    store.delete(version)
    return {**meter.rates(), "loss": manifest.metrics["loss"]}


def run_trl(store, pairs: list[dict], work: Path, overrides: dict) -> dict:
    from trl import DPOConfig, DPOTrainer

    from srlm.trainer.data import dpo_examples

    return run_trl_trainer(DPOTrainer, DPOConfig, store, dpo_examples(pairs), work, per_device_train_batch_size=BATCH,
                           max_length=512)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=16, help="one epoch: pairs / 2 optimizer steps")
    parser.add_argument("--response-words", type=int, default=150, help="~1.2 tokens a word; 420 fills 512")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a dpo config value for srlm's run (YAML value), e.g. dropout=0")
    add_run_arguments(parser, ("srlm", "srlm-full-head", "trl"))  # the full head with --only
    args = parser.parse_args()
    if args.child:
        runners = {"srlm": run_srlm, "srlm-full-head": with_full_lm_head(run_srlm), "trl": run_trl}
        return child(args, runners, synthetic_pairs(args.pairs, args.response_words), parse_overrides(args.set))

    from transformers import AutoTokenizer

    from srlm.trainer.data import dpo_examples

    with base_model_store(args.store, "bench-dpo-store-") as store:
        tok = AutoTokenizer.from_pretrained(store.path("m0"))
        lengths = [len(tok(tok.apply_chat_template(e["prompt"] + e["chosen"], tokenize=False))["input_ids"])
                   for e in dpo_examples(synthetic_pairs(args.pairs, args.response_words))]
        print(f"{args.pairs} pairs (prompt+chosen {min(lengths)}-{max(lengths)} tokens), batch {BATCH}, "
              f"max length 512, one epoch = {args.pairs // BATCH} optimizer steps each")
        results = run_children(__file__, args, store, ["--pairs", str(args.pairs), "--response-words",
                                                       str(args.response_words), *(f"--set={kv}" for kv in args.set)])

    print_comparison(results, {"srlm": "srlm train_dpo", "srlm-full-head": "srlm, TRL's full LM head",
                               "trl": "TRL DPOTrainer defaults"})


if __name__ == "__main__":
    main()
