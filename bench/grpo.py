"""Benchmark: GRPO training throughput and memory of srlm's trainer vs TRL's GRPOTrainer with its defaults.

Both train SmolLM2-135M (M0) on the same scored candidate groups (synthetic prompts, 4 candidates
each, deterministic rewards), handed to TRL's GRPOTrainer through ``rollout_func`` (no generation
in either), on the CPU (or a GPU if there is one):
  * srlm: ``srlm.trainer.grpo.train_grpo`` with srlm's GRPO config (TRL's maths; checkpointing of
    every 2nd layer, its log-prob tile, bf16 autocast);
  * TRL: ``GRPOTrainer`` (srlm's subclass, whose only change is the rollout: the same groups)
    with TRL's ``GRPOConfig`` defaults and only what the comparison fixes: the groups' size and
    temperature, the batch, the number of steps, ``use_cpu`` on a CPU machine, the seed.
Each runs in its own process (its own peak RSS). Tokens are TRL's own count of prompt and
completion tokens; rates as in ``bench/dpo.py``: end to end (from the call to the last step) and
steps (optimizer steps after the first).

    python bench/grpo.py [--groups 16] [--steps 8] [--only srlm|trl]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.trainer_runs import (  # noqa: E402
    WORDS, Meter, add_run_arguments, base_model_store, child, print_comparison, run_children, step_meter)

GROUP, BATCH, TEMPERATURE = 4, 8, 0.7


def synthetic_groups(n: int, seed: int = 0) -> list[dict]:
    """Deterministic groups: a ~30-word prompt, 4 candidates of 40-120 words, rewards in [0, 1]."""
    rng = random.Random(seed)

    def text(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."

    return [{"group_id": f"g{i}", "prompt": f"Question {i}: {text(30)}", "temperature": TEMPERATURE,
             "candidates": [{"text": text(rng.randint(40, 120)), "reward": rng.random()} for _ in range(GROUP)]}
            for i in range(n)]


def run_srlm(store, groups: list[dict], work: Path, steps: int) -> dict:
    from srlm.config import GRPOConfig
    from srlm.trainer.grpo import train_grpo

    cfg = GRPOConfig(batch_size=BATCH, max_steps=steps, save_steps=10_000, precision="bf16")  # as TRL's default
    version = f"bench-srlm-{os.getpid()}"
    meter = Meter()
    train_grpo(store, "m0", version, groups, cfg, run_id="bench", iteration=2, work_dir=work / "srlm", seed=42,
               callbacks=[step_meter(meter)])
    store.delete(version)
    return meter.rates()


def run_trl(store, groups: list[dict], work: Path, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig

    from srlm.trainer.grpo import GroupGRPOTrainer, grpo_examples
    from srlm.config import GRPOConfig as SrlmGRPOConfig

    examples, by_prompt, _ = grpo_examples(groups, SrlmGRPOConfig())
    path = store.path("m0")
    args = GRPOConfig(output_dir=str(work / "trl"), num_generations=GROUP, per_device_train_batch_size=BATCH,
                      temperature=TEMPERATURE, max_steps=steps, use_cpu=not torch.cuda.is_available(), seed=42,
                      report_to=[], disable_tqdm=True, save_strategy="no", log_completions=False,
                      max_completion_length=max(len(c["text"].split()) * 2 for g in groups for c in g["candidates"]))
    meter = Meter()
    trainer = GroupGRPOTrainer(model=AutoModelForCausalLM.from_pretrained(path), args=args,
                               train_dataset=Dataset.from_list(examples),
                               processing_class=AutoTokenizer.from_pretrained(path), callbacks=[step_meter(meter)],
                               groups=by_prompt, importance_correction=False)
    trainer.train()
    return meter.rates()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8, help=f"optimizer steps of {BATCH} candidates")
    add_run_arguments(parser)
    args = parser.parse_args()
    if args.child:
        return child(args, {"srlm": run_srlm, "trl": run_trl}, synthetic_groups(args.groups), args.steps)

    with base_model_store(args.store, "bench-grpo-store-") as store:
        print(f"{args.groups} groups of {GROUP}, batch {BATCH} candidates, {args.steps} optimizer steps each")
        results = run_children(__file__, args, store, ["--groups", str(args.groups), "--steps", str(args.steps)])

    print_comparison(results, {"srlm": "srlm train_grpo", "trl": "TRL GRPOTrainer defaults"})


if __name__ == "__main__":
    main()
