"""What the trainer benchmarks share (``bench/dpo.py``, ``bench/grpo.py``, ``bench/reward_model.py``):
a meter of tokens per optimizer step, a store holding M0, one child process per trainer (so each
peak RSS is its own), and the table of srlm against TRL with their ratios."""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

WORDS = ("model data answer question reason because the a of to and in that is it for on with as "
         "helpful clear step first then finally example result value method simple detail explain").split()


class Meter:
    """The start, then (time, tokens trained so far) after every optimizer step."""

    def __init__(self):
        self.start = time.perf_counter()
        self.marks: list[tuple[float, int]] = []

    def mark(self, tokens: int) -> None:
        self.marks.append((time.perf_counter(), int(tokens)))

    def rates(self) -> dict:
        if len(self.marks) < 2:
            raise SystemExit("need at least 2 optimizer steps (the first one is a warm-up): use more data")
        (t0, n0), (t1, n1) = self.marks[0], self.marks[-1]
        return {"end_to_end": n1 / (t1 - self.start), "steps": (n1 - n0) / (t1 - t0), "tokens": n1,
                "seconds": t1 - self.start, "optimizer_steps": len(self.marks)}


def step_meter(meter: Meter):
    """A Trainer callback that marks the trainer's token count after every optimizer step."""
    from transformers import TrainerCallback

    class StepMeter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            meter.mark(state.num_input_tokens_seen)

    return StepMeter()


def run_trl_trainer(trainer_cls, config_cls, store, examples: list[dict], work: Path, **fixed) -> dict:
    """TRL's ``trainer_cls`` on M0 with ``config_cls``'s defaults and only the ``fixed`` values (plus
    the same seed, the CPU where there is no GPU, no reporting); its rates and last logged loss."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = store.path("m0")
    args = config_cls(output_dir=str(work / "trl"), num_train_epochs=1, use_cpu=not torch.cuda.is_available(),
                      seed=42, report_to=[], disable_tqdm=True,
                      include_num_input_tokens_seen="non_padding", **fixed)  # counting only; no effect on training
    meter = Meter()
    trainer = trainer_cls(model=AutoModelForCausalLM.from_pretrained(path), args=args,
                          train_dataset=Dataset.from_list(examples),
                          processing_class=AutoTokenizer.from_pretrained(path), callbacks=[step_meter(meter)])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]  # TRL logs every 10 steps
    return {**meter.rates(), "loss": losses[-1] if losses else None}


def with_full_lm_head(run):
    """``run`` with TRL's own choice on a CPU of projecting every position through the fused LM
    head: what srlm's compact path (``configure_fused_lm_head``) is worth."""
    def full_head(*args):
        from srlm.trainer import job

        job._compact_on_cpu = lambda use_triton: use_triton
        return run(*args)

    return full_head


def add_run_arguments(parser: argparse.ArgumentParser, runners: tuple[str, ...] = ("srlm", "trl")) -> None:
    """``--only``, ``--store`` and the children's ``--child``."""
    parser.add_argument("--only", choices=runners)
    parser.add_argument("--store", help="model store root holding m0 (default: a temporary one)")
    parser.add_argument("--child", choices=runners, help=argparse.SUPPRESS)


@contextmanager
def base_model_store(root: str | None, prefix: str):
    """A model store holding M0: ``root``, or a temporary one removed afterwards."""
    from srlm.models.importer import import_base_model
    from srlm.models.store import ModelStore

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        store = ModelStore(root or tmp)
        import_base_model(store)
        yield store


def parse_overrides(pairs: list[str]) -> dict:
    """``--set KEY=VALUE`` arguments as config values (YAML)."""
    import yaml

    return {key: yaml.safe_load(value) for key, value in (kv.split("=", 1) for kv in pairs)}


def child(args: argparse.Namespace, runners: dict, data: list[dict], *extra) -> None:
    """In a child process: ``runners[args.child](store, data, work_dir, *extra)``, then its figures
    and its own peak RSS as the last line."""
    from srlm.models.store import ModelStore

    with tempfile.TemporaryDirectory(prefix=f"bench-{args.child}-") as work:
        result = runners[args.child](ModelStore(args.store), data, Path(work), *extra)
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(result), flush=True)


def run_children(script: str, args: argparse.Namespace, store, argv: list[str],
                 runners: tuple[str, ...] = ("srlm", "trl")) -> dict[str, dict]:
    """``script --child which --store S argv...`` for each runner (or ``--only`` one), each in a
    process of its own; their ``RESULT {json}`` lines."""
    results = {}
    for which in (args.only,) if args.only else runners:
        proc = subprocess.run([sys.executable, script, "--child", which, "--store", str(store.root), *argv],
                              capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.exit(f"{which} run failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        results[which] = json.loads(lines[-1][len("RESULT "):])
    return results


def print_comparison(results: dict[str, dict], names: dict[str, str]) -> None:
    """A row per trainer (with its final loss where it has one), then each one's ratios to TRL."""
    losses = any("loss" in r for r in results.values())
    print(f"\n{'trainer':<26}{'tokens':>8}{'e2e tok/s':>11}{'step tok/s':>12}{'peak RSS GiB':>14}"
          + (f"{'loss':>9}" if losses else ""))
    for which, r in results.items():
        loss = "" if not losses else f"{'-' if r.get('loss') is None else format(r['loss'], '.4f'):>9}"
        print(f"{names[which]:<26}{r['tokens']:>8}{r['end_to_end']:>11.1f}{r['steps']:>12.1f}"
              f"{r['peak_rss_gib']:>14.2f}{loss}")
    t = results.get("trl")
    for which, s in results.items():
        if t is not None and which != "trl":
            print(f"\n{which} / TRL: end-to-end tokens/s {s['end_to_end'] / t['end_to_end']:.2f}x, "
                  f"step tokens/s {s['steps'] / t['steps']:.2f}x, "
                  f"peak RSS {s['peak_rss_gib'] / t['peak_rss_gib']:.2f}x")
