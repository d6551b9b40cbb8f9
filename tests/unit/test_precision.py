"""engine.dtype and training precision 'auto': bf16 only where the hardware computes it."""

import pytest

from srlm.config import SRLMConfig
from srlm.runtime import precision
from srlm.runtime.precision import cpu_flags, engine_dtype, training_precision

AVX2_EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu vme sse sse2 avx f16c fma avx2 hypervisor
processor\t: 1
flags\t\t: fpu vme sse sse2 avx f16c fma avx2 hypervisor
"""
SAPPHIRE_RAPIDS = "flags\t\t: fpu avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8\n"
# a Xeon whose hypervisor hides AMX: bf16 dot products only, slower than fp32 (bench/precision.py)
XEON_WITHOUT_AMX = "flags\t\t: fpu avx2 avx512f avx512bw avx512_vnni avx512_bf16 avx512_fp16\n"


def test_cpu_flags_are_read_from_cpuinfo():
    assert cpu_flags(AVX2_EPYC) == {"fpu", "vme", "sse", "sse2", "avx", "f16c", "fma", "avx2", "hypervisor"}
    assert cpu_flags("vendor_id : x\n") == set()
    assert not cpu_flags(AVX2_EPYC) & precision.CPU_BF16_FLAGS
    assert cpu_flags(SAPPHIRE_RAPIDS) & precision.CPU_BF16_FLAGS == {"amx_bf16"}
    assert not cpu_flags(XEON_WITHOUT_AMX) & precision.CPU_BF16_FLAGS


@pytest.mark.parametrize("native, dtype, want", [(True, "bfloat16", "bf16"), (False, "float32", "fp32")])
def test_auto_follows_the_cpu(monkeypatch, native, dtype, want):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: native)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # the trainer runs on the CPU
    assert engine_dtype("auto", "cpu") == dtype
    assert training_precision("auto") == want


def test_an_explicit_choice_is_kept(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    assert [engine_dtype(d, "cpu") for d in ("bfloat16", "float16", "float32")] == ["bfloat16", "float16", "float32"]
    assert [training_precision(p) for p in ("bf16", "fp32")] == ["bf16", "fp32"]


def test_auto_is_the_default():
    cfg = SRLMConfig()
    assert cfg.engine.dtype == "auto"
    assert {cfg.sft.precision, cfg.dpo.precision, cfg.grpo.precision, cfg.ppo.precision} == {"auto"}
