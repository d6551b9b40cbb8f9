"""Benchmark: SFT training throughput and memory of srlm's trainer vs TRL with its defaults, on
EFT-shaped examples (M0 -> M1's SFT set is mostly these: a ~700-token judge prompt, a ~50-token
rationale and verdict to learn).

Each trains SmolLM2-135M (M0) for one epoch on the same synthetic examples, batch 4 (2 per
step x 2 accumulated), max length 768, in fp32 (the precision ``auto`` picks on a CPU without
native bf16; TRL's default bf16 autocast is emulated there, x6 slower), on the CPU:
  * srlm: ``srlm.trainer.sft.train_sft`` with ``configs/small.yaml``'s SFT section, which
    projects only the answer positions through the LM head (``configure_fused_lm_head``);
  * srlm-full-head: the same, with TRL's CPU choice of projecting every position: what that
    one change is worth;
  * TRL: ``trl.SFTTrainer`` with TRL's defaults (gradient checkpointing, loss on the completion
    only) and only what the comparison fixes: one epoch, the batch, max length 768, fp32,
    ``use_cpu``, the same seed.

Each runs in its own process, so its peak RSS is its own. Tokens are the non-padding tokens
trained on; rates as in ``bench/dpo.py`` (end to end from the call; steps after the first).

    python bench/sft.py [--examples 12] [--prompt-words 230] [--only srlm|srlm-full-head|trl]
                        [--set dropout=0]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.trainer_runs import (  # noqa: E402
    WORDS, Meter, add_run_arguments, base_model_store, child, parse_overrides, print_comparison, run_children,
    run_trl_trainer, step_meter, with_full_lm_head)

REPO = Path(__file__).resolve().parents[1]
PER_DEVICE, ACCUMULATION, MAX_LENGTH = 2, 2, 768
RUNNERS = ("srlm", "srlm-full-head", "trl")


def eft_rows(n: int, prompt_words: int, seed: int = 0) -> list[dict]:
    """Deterministic EFT-shaped rows: the paper's judge prompt around a response of a third of
    ``prompt_words`` to all of it (a batch is padded, as real ones are), and a ~40-word
    rationale ending in its verdict."""
    from srlm.recipe.judge import build_judge_messages

    rng = random.Random(seed)

    def text(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."

    def response() -> str:
        return text(rng.randint(prompt_words // 3, prompt_words))

    return [{"prompt": build_judge_messages(f"Question {i}: {text(20)}", response()),
             "completion": [{"role": "assistant", "content": f"{text(40)}\nScore: {i % 6}"}],
             "example_id": f"bench-eft-{i}"} for i in range(n)]


def sft_section(overrides: dict):
    from srlm.config import SFTConfig, load_config

    shipped = load_config(REPO / "configs" / "small.yaml").sft.model_dump()
    return SFTConfig(**{**shipped, "batch_size": PER_DEVICE * ACCUMULATION, "per_device_batch_size": PER_DEVICE,
                        "num_epochs": 1, "max_length": MAX_LENGTH, "precision": "fp32", "save_steps": 10_000,
                        **overrides})


def run_srlm(store, rows: list[dict], work: Path, overrides: dict) -> dict:
    from srlm.trainer.sft import train_sft

    version = f"bench-srlm-{os.getpid()}"  # a new version: an existing one would be returned untrained
    meter = Meter()
    manifest = train_sft(store, "m0", version, rows, sft_section(overrides), run_id="bench", work_dir=work / "srlm",
                         seed=42, callbacks=[step_meter(meter)])
    store.delete(version)
    return {**meter.rates(), "loss": manifest.metrics["loss"]}


def run_trl(store, rows: list[dict], work: Path, overrides: dict) -> dict:
    from trl import SFTConfig, SFTTrainer

    from srlm.trainer.data import sft_examples

    return run_trl_trainer(SFTTrainer, SFTConfig, store, sft_examples(rows), work,
                           per_device_train_batch_size=PER_DEVICE, gradient_accumulation_steps=ACCUMULATION,
                           max_length=MAX_LENGTH, bf16=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=12, help="one epoch: examples / 4 optimizer steps")
    parser.add_argument("--prompt-words", type=int, default=230,
                        help="most words of a judged response (~1.2 tokens each); 230: 480-730-token examples")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an sft config value for srlm's runs (YAML value), e.g. dropout=0")
    add_run_arguments(parser, RUNNERS)
    args = parser.parse_args()
    rows = eft_rows(args.examples, args.prompt_words)
    if args.child:
        return child(args, {"srlm": run_srlm, "srlm-full-head": with_full_lm_head(run_srlm), "trl": run_trl}, rows,
                     parse_overrides(args.set))

    from transformers import AutoTokenizer

    from srlm.trainer.data import sft_examples

    with base_model_store(args.store, "bench-sft-store-") as store:
        tok = AutoTokenizer.from_pretrained(store.path("m0"))
        def length(messages, **kw) -> int:
            return len(tok.apply_chat_template(messages, return_dict=True, **kw)["input_ids"])

        prompts, answers = [], []
        for e in sft_examples(rows):
            prompts.append(length(e["prompt"], add_generation_prompt=True))
            answers.append(length(e["prompt"] + e["completion"]) - prompts[-1])
        print(f"{args.examples} EFT-shaped examples (prompt {min(prompts)}-{max(prompts)} tokens, answer "
              f"{min(answers)}-{max(answers)}), batch {PER_DEVICE * ACCUMULATION}, max length {MAX_LENGTH}, fp32, "
              f"one epoch = {args.examples // (PER_DEVICE * ACCUMULATION)} optimizer steps each")
        results = run_children(__file__, args, store, ["--examples", str(args.examples), "--prompt-words",
                                                       str(args.prompt_words), *(f"--set={kv}" for kv in args.set)],
                               RUNNERS)

    print_comparison(results, {"srlm": "srlm train_sft", "srlm-full-head": "srlm, TRL's full LM head",
                               "trl": "TRL SFTTrainer defaults"})


if __name__ == "__main__":
    main()
