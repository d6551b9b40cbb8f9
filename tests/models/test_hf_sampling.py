"""The transformers engine's pure helpers: exact top-p sampling and grouping rows by prefix."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from srlm.models.engines.hf import NucleusSampler, _common_prefix, _group_consecutive

PROBS = [0.5, 0.3, 0.1, 0.05, 0.03, 0.02]


def draws(sampler: NucleusSampler, probs: list[float], rows: int = 4000) -> Counter:
    torch.manual_seed(0)
    scores = torch.tensor([[math.log(p) for p in probs]] * rows)
    out = sampler(None, scores)
    finite = torch.isfinite(out)
    assert finite.sum(dim=-1).tolist() == [1] * rows  # one token per row, the others -inf
    assert (out[finite] == 0).all()
    return Counter(finite.float().argmax(dim=-1).tolist())


@pytest.mark.parametrize("candidates", [2, 256, 1])  # 1: the top candidate holds < top_p, full sort
def test_top_p_keeps_the_smallest_set_reaching_the_mass(candidates):
    # 0.5 < 0.7, 0.5 + 0.3 >= 0.7: the nucleus is tokens 0 and 1, renormalised to 5/8 and 3/8
    seen = draws(NucleusSampler(temperature=1.0, top_p=0.7, candidates=candidates), PROBS)
    assert set(seen) == {0, 1}
    assert seen[0] / 4000 == pytest.approx(0.625, abs=0.03)


def test_temperature_sharpens_and_top_p_one_keeps_everything():
    everything = draws(NucleusSampler(temperature=1.0, top_p=1.0), PROBS, rows=20000)
    assert set(everything) == set(range(len(PROBS)))
    assert everything[5] / 20000 == pytest.approx(0.02, abs=0.006)
    cold = draws(NucleusSampler(temperature=0.25, top_p=1.0), PROBS)
    assert cold[0] / 4000 > 0.85  # 0.5^4 : 0.3^4 : ... -> 0.88 for token 0


def test_same_seed_same_tokens():
    sampler = NucleusSampler(temperature=0.7, top_p=0.9)
    assert draws(sampler, PROBS) == draws(sampler, PROBS)


def test_grouping_rows_by_prefix():
    assert _group_consecutive(["a", "a", "b", "a", "a"]) == [0, 0, 1, 2, 2]
    assert _group_consecutive([]) == []
    assert _common_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == [1, 2]
    assert _common_prefix([[1, 2], [1, 2]]) == [1, 2]
    assert _common_prefix([[], [1]]) == []
