"""Training rows -> TRL's conversational formats, validated (pure: no I/O, no model).

SFT rows (IFT and EFT alike) are chat examples, either ``{"messages": [..., assistant]}`` or
TRL's prompt-completion ``{"prompt": [...], "completion": [assistant]}`` (a plain string is
read as one user / assistant turn). They become conversational prompt-completion examples, so
TRL computes the loss on the completion (the answer) only.

DPO rows are ``{"prompt": str, "chosen": str, "rejected": str, "pair_id": str}``; the prompt
becomes a user message and the answers assistant messages.

Other keys (``example_id``, scores, ...) are kept in the stored training set but not trained
on. A bad row raises ``TrainingDataError`` naming the row and the field.
"""

from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant")


class TrainingDataError(ValueError):
    """A training row is malformed; the message names the row and the field."""


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise TrainingDataError(f"{where}: expected a non-empty list of messages, got {type(value).__name__}")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise TrainingDataError(f"{where}[{i}]: expected a message object, got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise TrainingDataError(f"{where}[{i}].role: expected one of {ROLES}, got {role!r}")
        if not isinstance(content, str):
            raise TrainingDataError(f"{where}[{i}].content: expected a string, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    return out


def _turn(value: Any, role: str, where: str) -> list[dict[str, str]]:
    """A string is one message of ``role``; a list is already messages."""
    if isinstance(value, str):
        if not value.strip():
            raise TrainingDataError(f"{where}: empty text")
        return [{"role": role, "content": value}]
    return _messages(value, where)


def _answer(value: Any, where: str) -> list[dict[str, str]]:
    turn = _turn(value, "assistant", where)
    if len(turn) != 1 or turn[0]["role"] != "assistant" or not turn[0]["content"].strip():
        raise TrainingDataError(f"{where}: expected one non-empty assistant message")
    return turn


def _check_rows(rows: Any) -> None:
    if not isinstance(rows, (list, tuple)) or not rows:
        raise TrainingDataError("no training rows: expected a non-empty list")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TrainingDataError(f"rows[{i}]: expected an object, got {type(row).__name__}")


def sft_examples(rows: list[dict[str, Any]]) -> list[dict[str, list[dict[str, str]]]]:
    """Chat examples -> ``{"prompt": messages, "completion": [assistant message]}``."""
    _check_rows(rows)
    out = []
    for i, row in enumerate(rows):
        if "messages" in row:
            messages = _messages(row["messages"], f"rows[{i}].messages")
            if len(messages) < 2:
                raise TrainingDataError(f"rows[{i}].messages: expected a prompt and an answer, got one message")
            prompt, completion = messages[:-1], _answer(messages[-1:], f"rows[{i}].messages[-1]")
        elif "prompt" in row and "completion" in row:
            prompt = _turn(row["prompt"], "user", f"rows[{i}].prompt")
            completion = _answer(row["completion"], f"rows[{i}].completion")
        else:
            raise TrainingDataError(f"rows[{i}]: expected 'messages' or 'prompt' and 'completion', "
                                    f"got keys {sorted(row)}")
        if prompt[-1]["role"] == "assistant":
            raise TrainingDataError(f"rows[{i}]: the prompt must end with a user (or system) message")
        out.append({"prompt": prompt, "completion": completion})
    return out


def dpo_examples(rows: list[dict[str, Any]]) -> list[dict[str, list[dict[str, str]]]]:
    """Preference pairs -> ``{"prompt": [user], "chosen": [assistant], "rejected": [assistant]}``.

    Each ``pair_id`` may appear once: a pair counted twice would weigh twice.
    """
    _check_rows(rows)
    out, seen = [], {}
    for i, row in enumerate(rows):
        for key in ("prompt", "chosen", "rejected", "pair_id"):
            if key not in row:
                raise TrainingDataError(f"rows[{i}].{key}: missing")
        pair_id = row["pair_id"]
        if not isinstance(pair_id, str) or not pair_id:
            raise TrainingDataError(f"rows[{i}].pair_id: expected a non-empty string, got {pair_id!r}")
        if pair_id in seen:
            raise TrainingDataError(f"rows[{i}].pair_id: {pair_id!r} repeats rows[{seen[pair_id]}]")
        seen[pair_id] = i
        out.append({
            "prompt": _turn(row["prompt"], "user", f"rows[{i}].prompt"),
            "chosen": _answer(row["chosen"], f"rows[{i}].chosen"),
            "rejected": _answer(row["rejected"], f"rows[{i}].rejected"),
        })
    return out


def sampling_temperature(rows: list[dict[str, Any]]) -> float:
    """The one temperature the groups' candidates were sampled at (the trainer scores their
    tokens at the same one)."""
    temperatures = {row.get("temperature") for row in rows}
    if len(temperatures) != 1 or not isinstance(t := temperatures.pop(), (int, float)) or t < 0:
        raise TrainingDataError(f"rows[*].temperature: one sampling temperature >= 0 expected, got "
                                f"{sorted(map(str, temperatures))}")
    return float(t)


def grpo_groups(rows: list[dict[str, Any]], drop_uniform: bool = True) -> dict[str, list[dict[str, Any]]]:
    """Scored candidate groups -> ``{prompt text: [candidate, ...]}`` for GRPO.

    A row is ``{"group_id", "prompt": str, "temperature": float, "candidates": [{"text", "reward",
    "token_ids"?, "logprobs"?}]}``; every group has the same number of candidates (TRL's ``num_generations``).
    A reward may be None (no source could score the candidate): it is left out of its group's
    baseline. With ``drop_uniform`` a group whose rewards are all equal (zero advantages) is left
    out; a second group with the same prompt text too (it would be the same GRPO example).
    """
    _check_rows(rows)
    groups: dict[str, list[dict[str, Any]]] = {}
    size = None
    for i, row in enumerate(rows):
        for key in ("group_id", "prompt", "candidates"):
            if key not in row:
                raise TrainingDataError(f"rows[{i}].{key}: missing")
        prompt = _turn(row["prompt"], "user", f"rows[{i}].prompt")[-1]["content"]
        candidates = row["candidates"]
        if not isinstance(candidates, list) or len(candidates) < 2:
            raise TrainingDataError(f"rows[{i}].candidates: expected a list of at least 2 candidates")
        size = size or len(candidates)
        if len(candidates) != size:
            raise TrainingDataError(f"rows[{i}].candidates: {len(candidates)} candidates, rows[0] has {size}: "
                                    f"every group must have the same size")
        out = []
        for j, c in enumerate(candidates):
            where = f"rows[{i}].candidates[{j}]"
            if not isinstance(c, dict) or not isinstance(c.get("text"), str):
                raise TrainingDataError(f"{where}.text: expected a string")
            reward = c.get("reward")
            if reward is not None and not (isinstance(reward, (int, float)) and reward == reward):
                raise TrainingDataError(f"{where}.reward: expected a number or null, got {reward!r}")
            token_ids, logprobs = c.get("token_ids") or [], c.get("logprobs") or []
            if logprobs and len(logprobs) != len(token_ids):
                raise TrainingDataError(f"{where}.logprobs: {len(logprobs)} values for {len(token_ids)} tokens")
            out.append({"text": c["text"], "reward": reward, "token_ids": list(token_ids),
                        "logprobs": list(logprobs)})
        scored = {c["reward"] for c in out if c["reward"] is not None}
        if drop_uniform and len(scored) < 2:
            continue
        groups.setdefault(prompt, out)
    return groups
