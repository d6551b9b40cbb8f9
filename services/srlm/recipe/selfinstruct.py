"""Self-instruct prompt generation (paper section 2.3, after Wang et al. 2023).

The model sees 8 example instructions (6 from the seed IFT data, 2 written by the model in
earlier rounds) and writes one new instruction. SmolLM2-Instruct and other chat models get
the few-shot task in a single user message and are asked for one line ``Task 9: <text>``;
:func:`extract_instruction` reads that back and tolerates the usual deviations (preambles,
markdown, quotes, extra tasks after the first).
"""

from __future__ import annotations

import random
import re
from typing import NamedTuple, Sequence

from srlm.config import SelfInstructConfig


class Demo(NamedTuple):
    """An instruction that can be shown as a demonstration: its id and its text."""

    id: str
    text: str


INSTRUCTIONS_HEADER = (
    "You are asked to come up with a new, diverse task instruction for an AI assistant. "
    "Here are some example instructions:"
)
INSTRUCTIONS_FOOTER = (
    "Write ONE new instruction that is different from all the examples above. It must be "
    "something an AI assistant can answer in text alone. Reply with the new instruction only, "
    "on one line, in this format:\nTask {n}: <the new instruction>"
)


def select_demonstrations(
    seed_prompts: Sequence[Demo],
    generated_prompts: Sequence[Demo],
    rng: random.Random,
    cfg: SelfInstructConfig,
) -> list[Demo]:
    """``num_seed_demonstrations`` seed + ``num_generated_demonstrations`` generated prompts, shuffled.

    While fewer generated prompts exist than asked for (the first round of an iteration),
    the missing places are filled with more seed prompts, so the prompt stays 8-shot.
    """
    total = cfg.num_seed_demonstrations + cfg.num_generated_demonstrations
    generated = rng.sample(list(generated_prompts), min(cfg.num_generated_demonstrations, len(generated_prompts)))
    chosen_ids = {d.id for d in generated}
    seeds = [d for d in seed_prompts if d.id not in chosen_ids]
    seeds = rng.sample(seeds, min(total - len(generated), len(seeds)))
    demos = seeds + generated
    rng.shuffle(demos)
    return demos


def render_instruction_prompt(demos: Sequence[Demo]) -> str:
    """The user message: numbered examples, then the request for task ``len(demos) + 1``."""
    lines = [INSTRUCTIONS_HEADER, ""]
    lines += [f"Task {i}: {_one_line(d.text)}" for i, d in enumerate(demos, start=1)]
    lines += ["", INSTRUCTIONS_FOOTER.format(n=len(demos) + 1)]
    return "\n".join(lines)


def build_messages(
    seed_prompts: Sequence[Demo],
    generated_prompts: Sequence[Demo],
    rng: random.Random,
    cfg: SelfInstructConfig,
) -> tuple[list[dict[str, str]], list[str]]:
    """The few-shot conversation asking for one new instruction, and the demonstrations' ids."""
    if not seed_prompts and not generated_prompts:
        raise ValueError("self-instruct needs at least one seed or generated prompt as a demonstration")
    demos = select_demonstrations(seed_prompts, generated_prompts, rng, cfg)
    return [{"role": "user", "content": render_instruction_prompt(demos)}], [d.id for d in demos]


def _one_line(text: str) -> str:
    # Demonstrations are shown one per line so the numbering stays unambiguous.
    return re.sub(r"\s+", " ", text).strip()


_TASK_MARKER = re.compile(
    r"^[ \t>#*_-]*(?:\d+[.)]\s*)?(?:new\s+)?(?:task|instruction)"
    r"(?:\s*#?\s*\d+\s*[*_]*\s*[:.)-]|\s*[*_]*\s*:)\s*[*_]*",
    re.IGNORECASE | re.MULTILINE,
)
_PREAMBLE = re.compile(r"^(?:sure|okay|ok|certainly|here)\b.*:\s*$", re.IGNORECASE)
_QUOTE_PAIRS = {'"': '"', "'": "'", "`": "`", "“": "”", "‘": "’"}
_EMPHASIS = "*_"


def _unwrap(text: str) -> str:
    """Strip surrounding quotes and emphasis (``**"..."**``) and a leading list number."""
    text = text.strip()
    while len(text) >= 2:
        first, last = text[0], text[-1]
        if first in _EMPHASIS and last == first:
            text = text[1:-1].strip()
        elif _QUOTE_PAIRS.get(first) == last and first not in text[1:-1] and last not in text[1:-1]:
            text = text[1:-1].strip()
        else:
            break
    text = re.sub(r"^\d+[.)]\s+", "", text)
    return re.sub(r"[ \t]+", " ", text).strip()


def extract_instruction(output: str) -> str | None:
    """The new instruction in a model output, or None when there is none.

    With a ``Task N:`` (or ``Instruction:``) marker: the text after the first marker up to
    the next marker or a blank line. Without one: the first paragraph, after dropping a
    preamble line such as "Sure, here is a new instruction:".
    """
    if not output or not output.strip():
        return None
    marker = _TASK_MARKER.search(output)
    if marker:
        # searching from a position keeps ``^`` at real line starts
        nxt = _TASK_MARKER.search(output, marker.end())
        body = output[marker.end() : nxt.start() if nxt else len(output)]
    else:
        lines = output.strip().splitlines()
        while lines and (not lines[0].strip() or _PREAMBLE.match(lines[0].strip())):
            lines.pop(0)
        body = "\n".join(lines)
    body = re.split(r"\n\s*\n", body.strip(), maxsplit=1)[0]
    text = _unwrap(body)
    return text or None
