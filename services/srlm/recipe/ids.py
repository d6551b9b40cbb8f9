"""Deterministic ids: the same inputs give the same id in every process and on every replay.

Ids are short lowercase ASCII (``[a-z0-9.-]``), safe as Kafka keys and file names. They are
derived with SHA-256 (never ``hash()``, which is salted per process).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata

_DIGEST_CHARS = 16  # 64 bits: collisions are negligible for millions of prompts

SEED_RUN_ID = "seed"  # run id used for the ids of seed data, which belongs to no run


def normalize_text(text: str) -> str:
    """Unicode-NFKC, lowercase, whitespace collapsed: the identity of a prompt's text."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().lower()


def _digest(*parts: object) -> str:
    # JSON framing keeps ("a b", "c") and ("a", "b c") apart.
    payload = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:_DIGEST_CHARS]


def prompt_id(run_id: str, iteration: int, text: str) -> str:
    """Id of a prompt of ``run_id``'s ``iteration``; equal for texts equal after normalization."""
    return f"p-{_digest('prompt', run_id, int(iteration), normalize_text(text))}"


def seed_prompt_id(text: str) -> str:
    """Id of a seed prompt (IFT/EFT data, held-out evaluation prompts)."""
    return prompt_id(SEED_RUN_ID, 0, text)


def candidate_id(prompt_id_: str, index: int) -> str:
    """Id of the ``index``-th candidate response to a prompt."""
    if index < 0:
        raise ValueError(f"candidate index must be >= 0, got {index}")
    return f"{prompt_id_}.c{index}"


def pair_id(run_id: str, iteration: int, prompt_id_: str) -> str:
    """Id of the preference pair made from a prompt (at most one per prompt and iteration)."""
    return f"pair-{_digest('pair', run_id, int(iteration), prompt_id_)}"
