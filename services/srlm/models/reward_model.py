"""A reward model's scores: the ``reward_model`` reward source (RLHF), and the held-out accuracy
of a reward model being trained.

A reward model is a model version of kind ``reward_model`` in the store (``srlm
train-reward-model``): a Hugging Face folder of a sequence-classification model with one output,
trained by TRL's RewardTrainer. It reads a (prompt, response) exchange as the chat it was trained
on (the tokenizer's chat template over a user and an assistant message) and its output at the
last token is the reward: a real number, higher is preferred, comparable between responses.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Sequence

import torch

from srlm.config import ConfigError, SRLMConfig
from srlm.models.store import ModelStore, ModelStoreError
from srlm.runtime.precision import engine_dtype, resolve_device

log = logging.getLogger(__name__)

Conversation = list[dict[str, str]]


class RewardModelError(ConfigError):
    """The configured reward model cannot be used (missing, not a reward model, unreadable); a
    config error, so ``srlm serve judge`` exits with the message naming the field."""


def exchange(prompt: str, response: str) -> Conversation:
    """A prompt and one response, as the reward model reads them (srlm's pair rows, trainer/data.py)."""
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def chat_ids(tokenizer, conversation: Conversation) -> list[int]:
    """Token ids of a whole conversation, as TRL's RewardTrainer tokenizes a conversational pair
    (``apply_chat_template`` of prompt + answer, no generation prompt)."""
    return list(tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"])


@torch.inference_mode()
def reward_scores(model, tokenizer, conversations: Sequence[Conversation], *, batch_size: int = 16,
                  max_length: int | None = None) -> list[float]:
    """The model's reward for each conversation, ``batch_size`` at a time (right-padded, as TRL's
    collator pads; causal attention keeps padding from changing a sequence's score)."""
    ids = [chat_ids(tokenizer, c) for c in conversations]
    if max_length is not None:
        ids = [x[-max_length:] for x in ids]  # the reward is read at the last token: keep the end
    pad_id = model.config.pad_token_id
    if pad_id is None:
        raise RewardModelError("the reward model's config has no pad_token_id: it cannot find a sequence's last "
                               "token (train it with srlm train-reward-model, which sets it)")
    device = next(model.parameters()).device
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths together: less padding
    out = [0.0] * len(ids)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = max(len(ids[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            input_ids[row, :len(ids[i])] = torch.tensor(ids[i])
            mask[row, :len(ids[i])] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        for row, i in enumerate(batch):
            out[i] = float(logits[row, 0])
    return out


def pairwise_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> dict[str, float]:
    """How often the chosen answer scores strictly above the rejected one (a tie is a miss), and
    the mean margin."""
    if len(chosen) != len(rejected) or not chosen:
        raise ValueError(f"pairwise accuracy of {len(chosen)} chosen and {len(rejected)} rejected scores")
    return {"accuracy": sum(c > r for c, r in zip(chosen, rejected)) / len(chosen),
            "margin": sum(c - r for c, r in zip(chosen, rejected)) / len(chosen)}


class RewardModelScorer:
    """A reward model loaded once (eval mode) that scores a prompt's responses in batches; one call
    at a time (the judge's gRPC and Kafka threads share it)."""

    def __init__(self, model_dir: Path, version_id: str, *, device: str = "auto", dtype: str = "float32",
                 batch_size: int = 16, max_length: int | None = None) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.version_id = version_id
        self.device = resolve_device(device)
        dtype = engine_dtype(dtype, self.device)
        self.batch_size, self.max_length = batch_size, max_length
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=getattr(torch, dtype))
        if self.model.config.num_labels != 1:
            raise RewardModelError(f"reward model {version_id!r} has {self.model.config.num_labels} outputs; a reward "
                                   f"model has one")
        self.model.to(self.device).eval()
        self._lock = threading.Lock()
        log.info("reward model %s loaded from %s on %s (%s)", version_id, model_dir, self.device, dtype)

    @classmethod
    def from_store(cls, store: ModelStore, config: SRLMConfig) -> "RewardModelScorer":
        """``rewards.reward_model_version`` from the store, on the engine's device and dtype; a version
        that is missing, corrupt or not a reward model is refused here, at start-up."""
        version = config.rewards.reward_model_version
        where = "rewards.reward_model_version"
        if not version:
            raise RewardModelError(f"{where}: not set, but rewards.weights.reward_model is not 0")
        try:
            manifest, model_dir = store.get(version), store.path(version)
        except (ModelStoreError, ValueError) as err:  # ValueError: not a valid version id
            raise RewardModelError(f"{where}: {err}") from None
        if manifest.kind != "reward_model":
            raise RewardModelError(f"{where}: {version!r} is a {manifest.kind} model, not a reward_model (train one "
                                   f"with srlm train-reward-model)")
        return cls(model_dir, version, device=config.engine.device, dtype=config.engine.dtype,
                   batch_size=config.reward_model.score_batch_size, max_length=config.engine.max_model_len)

    def score(self, prompt: str, responses: Sequence[str]) -> list[float]:
        """The reward of each response to ``prompt``."""
        with self._lock:
            return reward_scores(self.model, self.tokenizer, [exchange(prompt, r) for r in responses],
                                 batch_size=self.batch_size, max_length=self.max_length)
