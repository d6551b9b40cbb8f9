"""Deterministic ids."""

from __future__ import annotations

import re
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from srlm.recipe.ids import candidate_id, pair_id, prompt_id, seed_prompt_id

SAFE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,63}$")


@given(run=st.text(max_size=20), it=st.integers(0, 100), text=st.text(max_size=200))
def test_ids_are_short_and_safe(run: str, it: int, text: str) -> None:
    pid = prompt_id(run, it, text)
    for value in (pid, candidate_id(pid, 3), pair_id(run, it, pid), seed_prompt_id(text)):
        assert SAFE.match(value), value


def test_prompt_id_ignores_case_and_whitespace_but_not_content() -> None:
    a = prompt_id("run-1", 2, "Write a poem about the sea.")
    assert a == prompt_id("run-1", 2, "  write a POEM\nabout   the sea. ")
    assert a != prompt_id("run-1", 2, "Write a poem about the sky.")
    assert a != prompt_id("run-1", 3, "Write a poem about the sea.")
    assert a != prompt_id("run-2", 2, "Write a poem about the sea.")
    assert prompt_id("a b", 1, "c") != prompt_id("a", 1, "b c")


def test_candidate_and_pair_ids() -> None:
    pid = prompt_id("run-1", 1, "x")
    assert candidate_id(pid, 0) == f"{pid}.c0"
    assert pair_id("run-1", 1, pid) != pair_id("run-1", 2, pid)
    assert pair_id("run-1", 1, pid).startswith("pair-")


def test_ids_are_stable_across_processes() -> None:
    code = ("from srlm.recipe.ids import prompt_id, pair_id; "
            "p = prompt_id('r', 1, 'héllo'); print(p, pair_id('r', 1, p))")
    runs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={"PYTHONHASHSEED": seed}).stdout
        for seed in ("1", "2")
    }
    assert len(runs) == 1
    p = prompt_id("r", 1, "héllo")
    assert runs.pop().split() == [p, pair_id("r", 1, p)]
