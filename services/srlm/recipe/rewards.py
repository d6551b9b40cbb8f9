"""Reward sources of the online objectives, and how they combine (pure: no model, no I/O).

Every scored candidate gets one value per source that can score it, and the weighted sum of
those values is its reward (``RewardsConfig``):

- ``self_judge``: the paper's LLM-as-a-Judge by M_t, the mean of its parsed 0-5 scores (RLAIF);
- ``verifier``: a program checks the response: IFEval's instruction checker on a prompt that
  carries instructions (the fraction followed, or all-or-nothing), or the label of a
  classification prompt (+1 correct, -1 wrong, -3 when no label can be read: the values of
  PPO-with-LoRA on GLUE, all config);
- ``reward_model``: a Bradley-Terry reward model's score of the (prompt, response) chat, a
  model version of its own kind trained on preference pairs (RLHF; its scorer is
  ``srlm.models.reward_model``, since this module holds no model).

A source that cannot score a candidate (no parsed judgment; a prompt without a verification)
is absent rather than zero, so it does not pull the weighted sum towards zero.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence

from srlm.recipe.evalsets import EvalPrompt, IFEvalSpec, ifeval_results

SOURCES = ("self_judge", "verifier", "reward_model")


@dataclass(frozen=True)
class Verification:
    """How a response to one prompt is checked: IFEval instructions, or a classification label."""

    instruction_ids: tuple[str, ...] = ()
    instruction_kwargs: tuple[dict, ...] = ()
    label: str = ""
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.instruction_ids) != len(self.instruction_kwargs):
            raise ValueError(f"verification: {len(self.instruction_ids)} instruction ids but "
                             f"{len(self.instruction_kwargs)} kwargs")
        if self.label and self.label not in self.labels:
            raise ValueError(f"verification: label {self.label!r} is not one of labels {list(self.labels)}")
        if self.instruction_ids and self.label:
            raise ValueError("verification: IFEval instructions or a label, not both")

    @property
    def empty(self) -> bool:
        return not (self.instruction_ids or self.label)

    @classmethod
    def from_record(cls, record) -> "Verification":
        """From a ``srlm.v1.Verification`` message; a bad kwargs JSON raises ``ValueError``."""
        kwargs = []
        for i, text in enumerate(record.instruction_kwargs_json):
            try:
                value = json.loads(text) if text else {}
            except json.JSONDecodeError as err:
                raise ValueError(f"verification.instruction_kwargs_json[{i}]: not JSON ({err})") from None
            if not isinstance(value, dict):
                raise ValueError(f"verification.instruction_kwargs_json[{i}]: expected an object")
            kwargs.append(value)
        return cls(tuple(record.instruction_ids), tuple(kwargs), record.label, tuple(record.labels))


@dataclass(frozen=True)
class LabelRewards:
    correct: float = 1.0
    wrong: float = -1.0
    unreadable: float = -3.0


def read_label(response: str, labels: Sequence[str]) -> str | None:
    """The one label the response names as a whole word (case-insensitive); None when it names
    none or several different ones (a hedge is not an answer)."""
    named = {label for label in labels
             if re.search(rf"(?<![\w-]){re.escape(label)}(?![\w-])", response, flags=re.IGNORECASE)}
    # "not entailment" names "entailment" too: keep only labels not inside another named one.
    named = {a for a in named if not any(a != b and a.lower() in b.lower() for b in named)}
    return named.pop() if len(named) == 1 else None


def label_reward(verification: Verification, response: str, values: LabelRewards = LabelRewards()) -> float:
    said = read_label(response, verification.labels)
    if said is None:
        return values.unreadable
    return values.correct if said.lower() == verification.label.lower() else values.wrong


def ifeval_reward(verification: Verification, prompt: str, response: str,
                  level: Literal["instruction", "prompt"] = "instruction") -> float:
    """IFEval's strict checker: the fraction of instructions followed, or 1/0 for all of them."""
    spec = IFEvalSpec(0, verification.instruction_ids, verification.instruction_kwargs)
    followed = ifeval_results(EvalPrompt("verify", prompt, "ifeval", None, spec), response, strict=True)
    return float(all(followed)) if level == "prompt" else sum(followed) / len(followed)


def verifier_reward(verification: Verification, prompt: str, response: str, *,
                    ifeval_level: Literal["instruction", "prompt"] = "instruction",
                    label_values: LabelRewards = LabelRewards()) -> float | None:
    """The verifier's reward, None when the prompt carries nothing to verify."""
    if verification.label:
        return label_reward(verification, response, label_values)
    if verification.instruction_ids:
        return ifeval_reward(verification, prompt, response, ifeval_level)
    return None


@dataclass(frozen=True)
class RewardMix:
    """Weights of the sources; a source with weight 0 is not computed."""

    weights: Mapping[str, float] = field(default_factory=lambda: {"self_judge": 1.0})

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(SOURCES)
        if unknown:
            raise ValueError(f"unknown reward sources {sorted(unknown)}; known: {list(SOURCES)}")

    def uses(self, source: str) -> bool:
        return self.weights.get(source, 0.0) != 0.0

    def combine(self, values: Mapping[str, float | None]) -> float | None:
        """Weighted sum of the sources that scored; None when none of the used ones did."""
        scored = [(self.weights[s], v) for s, v in values.items() if self.uses(s) and v is not None]
        return sum(w * v for w, v in scored) if scored else None


def group_advantages(rewards: Sequence[float | None], scale: Literal["group", "none"] = "group",
                     eps: float = 1e-4) -> list[float | None]:
    """GRPO's advantage of each candidate of one group, as TRL computes it: the reward minus the
    group's mean, divided by the group's (unbiased) standard deviation + ``eps``; an unscored
    candidate has none and is left out of the mean (for ``srlm inspect group``)."""
    scored = [r for r in rewards if r is not None]
    if len(scored) < 2:
        return [None if r is None else 0.0 for r in rewards]
    mean = sum(scored) / len(scored)
    std = (sum((r - mean) ** 2 for r in scored) / (len(scored) - 1)) ** 0.5
    return [None if r is None else (r - mean) / (std + eps if scale == "group" else 1.0) for r in rewards]
