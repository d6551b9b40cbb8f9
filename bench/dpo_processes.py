"""Benchmark: one DPO round on 1 process vs the same round on N processes (DDP, accelerate's
launcher, gloo on a CPU; NCCL on GPUs).

Same pairs (bench/dpo.py's synthetic ones), same global batch, same optimizer steps, the
paper's DPO config otherwise. Reported per layout: the trainer's tokens/s over its training
steps (``train_tokens_per_second``: every rank's tokens, the reference scoring before the
first step excluded), the wall time of the whole round (model loading, launcher and publishing
included) and the peak RSS of each training process (sampled every 0.2 s), with the ratio
N processes / 1 process measured in the same run.

    python bench/dpo_processes.py [--processes 2] [--pairs 32] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.dpo import synthetic_pairs  # noqa: E402


def round_in_child(layout: str, store_root: str, work: str, args: argparse.Namespace) -> dict:
    """Run one layout in its own process (its own peak memory), sampling every training process."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", layout, "--store", store_root, "--work", work,
                             "--processes", str(args.processes), "--pairs", str(args.pairs),
                             "--batch", str(args.batch)], stdout=subprocess.PIPE, text=True)
    peaks: dict[int, int] = {}
    stop = threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not stop.wait(0.2):
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for p in procs:
                try:
                    cmdline = p.cmdline()
                    rank = "srlm.trainer.rank" in cmdline and "accelerate.commands.launch" not in cmdline
                    if (p.pid != proc.pid) if layout == "one" else not rank:
                        continue
                    peaks[p.pid] = max(peaks.get(p.pid, 0), p.memory_info().rss)
                except psutil.Error:
                    continue

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    out, _ = proc.communicate()
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"the {layout} layout failed (rc {proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(wall_s=wall, peak_rss_gib=sorted(round(v / 2**30, 2) for v in peaks.values()))
    return result


def child(args: argparse.Namespace) -> None:
    from srlm.config import DPOConfig, SRLMConfig
    from srlm.models.store import ModelStore
    from srlm.trainer.distributed import run_distributed_round
    from srlm.trainer.dpo import train_dpo

    store, pairs = ModelStore(args.store), synthetic_pairs(args.pairs, 150)
    cfg = DPOConfig(batch_size=args.batch, per_device_batch_size=2, max_length=512, save_steps=10_000)
    version = f"bench-{args.child}"
    if args.child == "one":
        manifest = train_dpo(store, "m0", version, pairs, cfg, run_id="bench", iteration=2,
                             work_dir=Path(args.work) / version, seed=0)
    else:
        config = SRLMConfig.model_validate({"distributed": {"strategy": "ddp", "num_processes": args.processes},
                                            "tracking": {"tensorboard": False}})
        manifest = run_distributed_round(store, config, kind="dpo", base_version="m0", out_version=version,
                                         rows=pairs, cfg=cfg, run_id="bench", iteration=2,
                                         work_dir=Path(args.work) / version, seed=0, environ={})
    m = manifest.metrics
    print(json.dumps({"tokens_per_s": m["train_tokens_per_second"], "train_runtime_s": m["train_runtime"],
                      "tokens": m["train_tokens"], "steps": m["global_step"],
                      "world_size": manifest.extra["world_size"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=32, help="one epoch: pairs / batch optimizer steps")
    parser.add_argument("--batch", type=int, default=8, help="global batch (the paper's is 16)")
    parser.add_argument("--store", help="model store root holding m0 (default: a temporary one)")
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=("one", "many"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from srlm.models.importer import import_base_model
    from srlm.models.store import ModelStore

    with tempfile.TemporaryDirectory(prefix="bench-dpo-processes-") as tmp:
        store_root = args.store or os.path.join(tmp, "store")
        store = ModelStore(store_root)
        if not store.exists("m0"):
            import_base_model(store, version_id="m0")
        for version in ("bench-one", "bench-many"):
            if store.exists(version):
                store.delete(version)
        results = {layout: round_in_child(layout, store_root, tmp, args) for layout in ("one", "many")}
    one, many = results["one"], results["many"]
    print(json.dumps(results, indent=2))
    print(f"\n1 process vs {args.processes} processes (DDP), {args.pairs} pairs, global batch {args.batch}, "
          f"{one['steps']:.0f} steps, on {os.cpu_count()} CPU cores:")
    print(f"  train tokens/s   {one['tokens_per_s']:8.1f}  {many['tokens_per_s']:8.1f}  "
          f"ratio x{many['tokens_per_s'] / one['tokens_per_s']:.2f}")
    print(f"  round wall s     {one['wall_s']:8.1f}  {many['wall_s']:8.1f}  "
          f"ratio x{many['wall_s'] / one['wall_s']:.2f}")
    print(f"  peak RSS GiB     {one['peak_rss_gib']}  {many['peak_rss_gib']} (per process)")


if __name__ == "__main__":
    main()
