"""The transformers engine's CPU decode attention and prefill buckets (pure tensor logic)."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from srlm.models.engines.hf import _length_buckets, decode_attention


class Layer(torch.nn.Module):
    num_key_value_groups = 3  # 9 query heads over 3 KV heads, as SmolLM2-135M
    is_causal = True


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("masked", [True, False])
def test_decode_attention_equals_sdpa(dtype, masked):
    torch.manual_seed(0)
    rows, keys = 5, 70
    query = torch.randn(rows, 9, 1, 64, dtype=dtype)
    key, value = torch.randn(rows, 3, keys, 64, dtype=dtype), torch.randn(rows, 3, keys, 64, dtype=dtype)
    mask = None
    if masked:  # left padding: row r sees its last keys - 10 r keys
        mask = torch.ones(rows, 1, 1, keys, dtype=torch.bool)
        for r in range(rows):
            mask[r, ..., :10 * r] = False
    ours, _ = decode_attention(Layer(), query, key, value, mask, scaling=0.125)
    theirs, _ = sdpa_attention_forward(Layer(), query, key, value, mask, scaling=0.125)
    assert ours.shape == theirs.shape == (rows, 1, 9, 64)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    assert torch.allclose(ours.float(), theirs.float(), atol=tolerance), (ours.float() - theirs.float()).abs().max()


def test_prefill_attention_is_sdpas():
    query, key = torch.randn(2, 9, 4, 64), torch.randn(2, 3, 4, 64)
    ours, _ = decode_attention(Layer(), query, key, key, None)
    theirs, _ = sdpa_attention_forward(Layer(), query, key, key, None)
    assert torch.equal(ours, theirs)


def test_length_buckets_keep_padding_small():
    # judge prompts: long ones together only while padding stays within 10% (or 256 tokens)
    lengths = [1021, 410, 975, 1139, 407, 1042, 399, 1075]
    buckets = _length_buckets(lengths)
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
    for b in buckets:
        padded = max(lengths[i] for i in b) * len(b)
        assert padded - sum(lengths[i] for i in b) <= max(0.1 * padded, 256)
    assert [sorted(lengths[i] for i in b) for b in buckets][0] == [399, 407, 410]
    assert _length_buckets([30, 50, 12, 80]) == [[2, 0, 1, 3]]  # short prompts: one forward
