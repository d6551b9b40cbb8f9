"""bf16 against fp32 on this machine's CPU, the choice behind ``engine.dtype: auto`` and a training
section's ``precision: auto`` (srlm/runtime/precision.py), on the real SmolLM2-135M M0.

    python bench/precision.py                 # batch 2 x 256 tokens, 3 repeats
    python bench/precision.py --threads 2 --tokens 512

Per precision, the median seconds of a forward pass (inference: weights in that dtype, as the
engines load them) and of a training step (forward + backward: fp32 weights, under bf16 autocast
for bf16, as the trainers run), measured alternately in one process; then bf16 / fp32 as ratios
and what ``auto`` picks here.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from srlm.models.importer import import_base_model
    from srlm.models.store import ModelStore
    from srlm.runtime.precision import cpu_has_fast_bf16, engine_dtype, training_precision

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(Path(tmp))
        path = store.path(import_base_model(store, version_id="m0").version_id)
        models = {name: AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
                  for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    ids = torch.randint(0, 1000, (args.batch, args.tokens), generator=torch.Generator().manual_seed(0))

    def forward(name: str) -> None:
        with torch.no_grad():
            models[name](input_ids=ids)

    def train_step(name: str) -> None:  # fp32 weights either way; bf16 is the trainers' autocast
        model = models["fp32"]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        model.zero_grad()

    for work in (forward, train_step):  # warm-up: first calls pay for allocation and kernel choice
        for name in models:
            work(name)
    seconds = {(work.__name__, name): [] for work in (forward, train_step) for name in models}
    for _ in range(args.repeats):
        for work in (forward, train_step):
            for name in models:  # alternated, so drift in the machine's speed hits both
                seconds[(work.__name__, name)].append(timed(lambda: work(name)))

    print(f"SmolLM2-135M, batch {args.batch} x {args.tokens} tokens, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print(f"{'work':<12}{'fp32 s':>10}{'bf16 s':>10}{'bf16/fp32':>12}")
    for work in ("forward", "train_step"):
        fp32, bf16 = (statistics.median(seconds[(work, name)]) for name in ("fp32", "bf16"))
        print(f"{work:<12}{fp32:>10.2f}{bf16:>10.2f}{bf16 / fp32:>11.2f}x")
    print(f"bf16 faster than fp32 on this CPU (AMX): {cpu_has_fast_bf16()}; auto picks engine.dtype "
          f"{engine_dtype('auto', 'cpu')}, training precision {training_precision('auto')}")


if __name__ == "__main__":
    main()
