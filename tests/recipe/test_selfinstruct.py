"""Self-instruct prompt building and instruction extraction."""

from __future__ import annotations

import random

import pytest

from srlm.config import SelfInstructConfig
from srlm.recipe.selfinstruct import Demo, build_messages, extract_instruction, select_demonstrations

SEEDS = [Demo(f"s{i}", f"Seed instruction number {i}?") for i in range(20)]
GENERATED = [Demo(f"g{i}", f"Generated instruction number {i}.") for i in range(5)]


def test_eight_shot_six_seed_two_generated() -> None:
    cfg = SelfInstructConfig()
    messages, ids = build_messages(SEEDS, GENERATED, random.Random(0), cfg)
    assert len(ids) == 8 == len(set(ids))
    assert sum(i.startswith("s") for i in ids) == 6 and sum(i.startswith("g") for i in ids) == 2
    assert len(messages) == 1 and messages[0]["role"] == "user"
    content = messages[0]["content"]
    by_id = {d.id: d.text for d in SEEDS + GENERATED}
    for n, demo_id in enumerate(ids, start=1):  # ids are in the order shown
        assert f"Task {n}: {by_id[demo_id]}" in content
    assert "Task 9: <the new instruction>" in content
    assert "ONE new instruction" in content


def test_missing_generated_prompts_are_filled_with_seeds() -> None:
    cfg = SelfInstructConfig()
    _, ids = build_messages(SEEDS, [], random.Random(1), cfg)
    assert len(ids) == 8 and all(i.startswith("s") for i in ids)
    _, ids = build_messages(SEEDS[:3], GENERATED[:1], random.Random(1), cfg)
    assert sorted(ids) == ["g0", "s0", "s1", "s2"]


def test_demonstrations_follow_config_and_rng() -> None:
    cfg = SelfInstructConfig(num_seed_demonstrations=3, num_generated_demonstrations=1)
    a = select_demonstrations(SEEDS, GENERATED, random.Random(7), cfg)
    b = select_demonstrations(SEEDS, GENERATED, random.Random(7), cfg)
    assert a == b and len(a) == 4
    assert sum(d.id.startswith("g") for d in a) == 1


def test_multiline_demonstrations_stay_on_one_line() -> None:
    demo = Demo("s", "Summarize this:\n\nThe quick   brown fox.")
    messages, _ = build_messages([demo], [], random.Random(0), SelfInstructConfig())
    assert "Task 1: Summarize this: The quick brown fox." in messages[0]["content"]


def test_no_demonstrations_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        build_messages([], [], random.Random(0), SelfInstructConfig())


EXTRACTIONS = [
    ("Task 9: Write a short poem about the sea.", "Write a short poem about the sea."),
    ("Task 9:Write a short poem about the sea.", "Write a short poem about the sea."),
    ("Sure! Here is a new instruction:\n\nTask 9: Explain how vaccines work.", "Explain how vaccines work."),
    ("**Task 9:** Describe the water cycle.", "Describe the water cycle."),
    ("**Task 9**: Describe the water cycle.", "Describe the water cycle."),
    ('Task 9: "List five uses of baking soda."', "List five uses of baking soda."),
    ("Task 9: “List five uses of baking soda.”", "List five uses of baking soda."),
    ("Task 9: Name three planets.\nTask 10: Name three moons.", "Name three planets."),
    ("Task 9: Name three planets.\n\nMercury, Venus and Earth.", "Name three planets."),
    ("Task 9:\nTranslate 'good morning' into Spanish.", "Translate 'good morning' into Spanish."),
    ("New instruction: Compare cats and dogs as pets.", "Compare cats and dogs as pets."),
    ("Instruction: Compare cats and dogs as pets.", "Compare cats and dogs as pets."),
    ("9. Give me a recipe for pancakes.", "Give me a recipe for pancakes."),
    ("Here's a new task:\nGive me a recipe for pancakes.", "Give me a recipe for pancakes."),
    ("Give me a recipe for pancakes.", "Give me a recipe for pancakes."),
    ("Task-oriented dialogue: explain how it works.", "Task-oriented dialogue: explain how it works."),
    ("Task 9: Task: plan a weekly budget.", "Task: plan a weekly budget."),
    ("'Quote' the text and 'explain' it.", "'Quote' the text and 'explain' it."),
    ("", None),
    ("   \n  ", None),
    ("Task 9:", None),
    ("Task 9: **  **", None),
]


@pytest.mark.parametrize("output,expected", EXTRACTIONS, ids=[repr(o)[:40] for o, _ in EXTRACTIONS])
def test_extract_instruction(output: str, expected: str | None) -> None:
    assert extract_instruction(output) == expected
