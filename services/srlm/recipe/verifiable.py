"""Verifiable instructions added to training prompts (pure, deterministic per prompt).

RL with verifiable rewards needs prompts whose answers a program can check. IFEval's own
instruction classes write the instruction text and choose its arguments
(``build_description``); appended to a prompt, they become its ``Verification`` and the IFEval
checker is the verifier. The instruction kinds are those a short answer can follow; the 541
IFEval prompts stay held out (the eval gate and the evaluation suite use them), only the
instruction kinds are shared, as in Tulu 3's RLVR data.
"""

from __future__ import annotations

import random
from typing import Sequence

from srlm.recipe.rewards import Verification

INSTRUCTION_IDS = (
    "punctuation:no_comma",
    "change_case:english_lowercase",
    "length_constraints:number_words",
    "length_constraints:number_sentences",
    "detectable_format:number_bullet_lists",
    "detectable_format:title",
    "detectable_format:number_highlighted_sections",
    "startend:end_checker",
    "startend:quotation",
    "keywords:letter_frequency",
)


def with_instructions(text: str, count: int, seed: int,
                      instruction_ids: Sequence[str] = INSTRUCTION_IDS) -> tuple[str, Verification]:
    """``text`` followed by ``count`` distinct instructions drawn with ``seed``, and their check."""
    from eval_framework.tasks.ifeval import instructions_registry

    rng = random.Random(seed)
    chosen = rng.sample(list(instruction_ids), min(count, len(instruction_ids)))
    descriptions, kwargs = [], []
    state = random.getstate()  # IFEval's classes draw their arguments from the global generator
    random.seed(rng.getrandbits(64))
    try:
        for instruction_id in chosen:
            instruction = instructions_registry.INSTRUCTION_DICT[instruction_id](instruction_id)
            descriptions.append(instruction.build_description())
            kwargs.append(instruction.get_instruction_args() or {})
    finally:
        random.setstate(state)
    return " ".join([text.rstrip(), *descriptions]), Verification(tuple(chosen), tuple(kwargs))
