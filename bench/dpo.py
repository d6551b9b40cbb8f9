"""Benchmark: DPO training throughput and memory of srlm's trainer vs TRL with its defaults.

Both train SmolLM2-135M (M0) on the same synthetic preference pairs, batch 2 (no gradient
accumulation), max length 512, CPU or GPU as available:
  * srlm: ``srlm.trainer.dpo.train_dpo`` with the paper's DPO config (beta 0.1, lr 1e-6 -> 1e-7,
    dropout 0.1, gradient checkpointing, bf16 autocast), publishing to a temporary store;
  * TRL: ``trl.DPOTrainer`` with TRL's defaults (bf16 autocast, dropout disabled, gradient
    checkpointing) and only what the comparison fixes: batch 2, max length 512, ``use_cpu``
    on a CPU machine, the same seed.

Each runs in its own process so its peak RSS is its own. Tokens/s counts non-padding tokens
of chosen and rejected sequences over the optimizer steps after the first (warm-up); loading,
tokenization and checkpoint saving are excluded.

    python bench/dpo.py [--pairs 32] [--steps 8] [--response-words 150] [--only srlm|trl]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("model data answer question reason because the a of to and in that is it for on with as "
         "helpful clear step first then finally example result value method simple detail explain").split()


def synthetic_pairs(n: int, response_words: int, seed: int = 0) -> list[dict]:
    """Deterministic pairs: a ~40-word prompt, a long chosen and a shorter rejected answer."""
    rng = random.Random(seed)

    def text(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."

    return [{"pair_id": f"bench-{i}", "prompt": f"Question {i}: {text(40)}",
             "chosen": text(response_words), "rejected": text(response_words * 3 // 4)} for i in range(n)]


class Meter:
    """(time, tokens seen) after every optimizer step."""

    def __init__(self):
        self.marks: list[tuple[float, int]] = []

    def mark(self, tokens: int) -> None:
        self.marks.append((time.perf_counter(), int(tokens)))

    def tokens_per_second(self) -> float:
        if len(self.marks) < 2:
            raise SystemExit("need at least 2 steps to time (the first one is a warm-up)")
        (t0, n0), (t1, n1) = self.marks[0], self.marks[-1]
        return (n1 - n0) / (t1 - t0)


def run_srlm(store, pairs: list[dict], steps: int, work: Path) -> dict:
    from srlm.config import DPOConfig
    from srlm.trainer.dpo import train_dpo

    meter = Meter()

    def progress(step, total, logs):
        if "loss" in logs:
            meter.mark(logs["num_input_tokens_seen"])

    cfg = DPOConfig(batch_size=2, per_device_batch_size=2, max_length=512, max_steps=steps, save_steps=10_000)
    version = f"bench-srlm-{os.getpid()}"  # a new version: an existing one would be returned untrained
    manifest = train_dpo(store, "m0", version, pairs, cfg, run_id="bench", iteration=2, work_dir=work / "srlm",
                         seed=42, progress_cb=progress)
    store.delete(version)
    return {"tokens_per_second": meter.tokens_per_second(), "steps": len(meter.marks),
            "loss": manifest.metrics["loss"], "margins": manifest.metrics.get("rewards/margins")}


def run_trl(store, pairs: list[dict], steps: int, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from srlm.trainer.data import dpo_examples

    meter = Meter()

    class StepMeter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            meter.mark(state.num_input_tokens_seen)

    path = store.path("m0")
    args = DPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=2, max_length=512, max_steps=steps,
                     use_cpu=not torch.cuda.is_available(), seed=42, report_to=[], disable_tqdm=True,
                     include_num_input_tokens_seen="non_padding")  # counting only; no effect on training
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(path), args=args,
                         train_dataset=Dataset.from_list(dpo_examples(pairs)),
                         processing_class=AutoTokenizer.from_pretrained(path), callbacks=[StepMeter()])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"tokens_per_second": meter.tokens_per_second(), "steps": len(meter.marks),
            "loss": losses[-1] if losses else None, "margins": None}


def child(which: str, store_root: str, args: argparse.Namespace) -> None:
    from srlm.models.store import ModelStore

    store = ModelStore(store_root)
    pairs = synthetic_pairs(args.pairs, args.response_words)
    with tempfile.TemporaryDirectory(prefix=f"bench-dpo-{which}-") as work:
        result = (run_srlm if which == "srlm" else run_trl)(store, pairs, args.steps, Path(work))
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(result), flush=True)


def measure(which: str, store_root: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", which, "--store", store_root, "--pairs", str(args.pairs),
           "--steps", str(args.steps), "--response-words", str(args.response_words)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{which} run failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per trainer (first one is warm-up)")
    parser.add_argument("--response-words", type=int, default=150, help="~1.2 tokens a word; 420 fills 512")
    parser.add_argument("--only", choices=("srlm", "trl"))
    parser.add_argument("--store", help="model store root holding m0 (default: a temporary one)")
    parser.add_argument("--child", choices=("srlm", "trl"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.store, args)

    from transformers import AutoTokenizer

    from srlm.models.importer import import_base_model
    from srlm.models.store import ModelStore
    from srlm.trainer.data import dpo_examples

    with tempfile.TemporaryDirectory(prefix="bench-dpo-store-") as tmp:
        store = ModelStore(args.store or tmp)
        import_base_model(store)
        tok = AutoTokenizer.from_pretrained(store.path("m0"))
        examples = dpo_examples(synthetic_pairs(args.pairs, args.response_words))
        chosen_tokens = [len(tok(tok.apply_chat_template(e["prompt"] + e["chosen"], tokenize=False))["input_ids"])
                         for e in examples]
        print(f"{args.pairs} pairs, prompt+chosen {min(chosen_tokens)}-{max(chosen_tokens)} tokens, "
              f"batch 2, max length 512, {args.steps} steps each")
        results = {which: measure(which, str(store.root), args)
                   for which in (("srlm", "trl") if not args.only else (args.only,))}

    print(f"\n{'trainer':<24}{'tokens/s':>10}{'peak RSS GiB':>14}{'final loss':>12}")
    names = {"srlm": "srlm train_dpo", "trl": "TRL DPOTrainer defaults"}
    for which, r in results.items():
        loss = "-" if r["loss"] is None else f"{r['loss']:.4f}"
        print(f"{names[which]:<24}{r['tokens_per_second']:>10.1f}{r['peak_rss_gib']:>14.2f}{loss:>12}")
    if len(results) == 2:
        ratio = results["srlm"]["tokens_per_second"] / results["trl"]["tokens_per_second"]
        print(f"\nsrlm / TRL tokens/s: {ratio:.2f}x; "
              f"peak RSS ratio {results['srlm']['peak_rss_gib'] / results['trl']['peak_rss_gib']:.2f}x")


if __name__ == "__main__":
    main()
