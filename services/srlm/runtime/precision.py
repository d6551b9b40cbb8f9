"""What ``engine.dtype: auto`` and a training section's ``precision: auto`` become on the device a
process runs on: bf16 where the hardware computes it faster than fp32, fp32 elsewhere.

On a CPU that means AMX tiles. A CPU without bf16 instructions emulates it: on a 2-core AVX2-only
EPYC a SmolLM2-135M forward ran x6.2 and a training step under bf16 autocast x26 slower than in
fp32. AVX512-BF16 alone (a dot product; everything around the matmuls converts) is not enough: on
a 2-core Xeon with avx512_bf16 and no AMX, x1.42 and x1.67 slower (``python bench/precision.py
--tokens 128 --repeats 2``, 2026-12-07; it prints the ratios of the machine it runs on)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

# /proc/cpuinfo flags of the x86 units that compute bf16 faster than fp32
CPU_BF16_FLAGS = frozenset({"amx_bf16"})


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags in the text of /proc/cpuinfo (every core lists the same)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return flags


@cache
def cpu_has_fast_bf16() -> bool:
    try:
        return bool(cpu_flags(Path("/proc/cpuinfo").read_text()) & CPU_BF16_FLAGS)
    except OSError:  # not Linux: nothing says it has them
        return False


def fast_bf16(device: str) -> bool:
    """Whether ``device`` ('cpu', 'cuda', 'cuda:N') computes bf16 faster than fp32."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.is_bf16_supported()
    return cpu_has_fast_bf16()


def resolve_device(device: str) -> str:
    """``engine.device``: 'auto' is the GPU where there is one."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def engine_dtype(dtype: str, device: str) -> str:
    """``engine.dtype`` on ``device``: 'auto' is bfloat16 where it is faster, float32 elsewhere."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if fast_bf16(device) else "float32"


def training_precision(precision: str) -> str:
    """A training section's ``precision`` on the device its trainer uses (TRL: a GPU when there
    is one): 'auto' is bf16 where it is faster, fp32 elsewhere."""
    if precision != "auto":
        return precision
    return "bf16" if fast_bf16(resolve_device("auto")) else "fp32"
