"""One interface for text generation: chat conversations in, n samples per prompt out.

Prompt generation, candidate sampling and judging all go through ``GenerationEngine``;
``create_engine`` picks the implementation from ``EngineConfig.kind``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Hashable, Sequence, TypeVar

if TYPE_CHECKING:
    from srlm.config import EngineConfig

Conversation = list[dict[str, str]]  # [{"role": "user", "content": ...}, ...]
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``temperature == 0`` is greedy decoding; ``stop`` strings end a sample."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be an integer >= 1, got {self.n!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if isinstance(self.stop, str) or any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop must be a tuple of non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))


@dataclass
class Completion:
    text: str
    num_tokens: int
    finish_reason: str  # "stop" (end of sequence or a stop string) | "length"
    token_ids: list[int] = field(default_factory=list)  # the sampled tokens (EOS included)
    # Their log-probabilities at the sampling temperature; empty when the engine has none.
    logprobs: list[float] = field(default_factory=list)


@dataclass
class GenerationResult:
    prompt_tokens: int
    completions: list[Completion]


def validate_conversations(conversations: list[Conversation]) -> None:
    """Raise ``ValueError`` saying which message is malformed (services answer INVALID_ARGUMENT)."""
    if not isinstance(conversations, (list, tuple)):
        raise ValueError(f"conversations must be a list, got {type(conversations).__name__}")
    for i, conv in enumerate(conversations):
        if not isinstance(conv, (list, tuple)) or not conv:
            raise ValueError(f"conversation {i} must be a non-empty list of messages")
        for j, msg in enumerate(conv):
            if not isinstance(msg, dict) or msg.get("role") not in ROLES or not isinstance(msg.get("content"), str):
                raise ValueError(f"conversation {i} message {j} must be {{'role': one of {ROLES}, "
                                 f"'content': str}}, got {msg!r}")


def truncate_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """Cut ``text`` before the earliest stop string (which is dropped, as vLLM does)."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


T = TypeVar("T")
R = TypeVar("R")


def in_groups(items: Sequence[T], key: Callable[[T], Hashable], run: Callable[[list[T]], list[R]]) -> list[R]:
    """``run`` once per group of ``items`` with equal ``key`` (one engine call per model version,
    per way of sampling); each result comes back in its item's place."""
    groups: dict[Hashable, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(key(item), []).append(i)
    out: list = [None] * len(items)
    for indices in groups.values():
        for i, result in zip(indices, run([items[i] for i in indices]), strict=True):
            out[i] = result
    return out


def distinct_samples(params: SamplingParams) -> int:
    """Samples worth generating: greedy decoding gives the same text n times, so once."""
    return 1 if params.temperature == 0 else params.n


def fill_samples(completions: list[Completion], n: int) -> list[Completion]:
    """``n`` completions from the ``distinct_samples`` generated (copies of a greedy one)."""
    return completions if len(completions) == n else [replace(completions[0]) for _ in range(n)]


def token_budget(prompt_tokens: int, max_tokens: int, max_model_len: int) -> int:
    """New tokens a prompt may get: ``max_tokens``, capped so prompt + output fit the context."""
    if prompt_tokens >= max_model_len:
        raise ValueError(f"prompt has {prompt_tokens} tokens; the engine's max_model_len is {max_model_len}")
    return min(max_tokens, max_model_len - prompt_tokens)


class GenerationEngine(ABC):
    """A loaded model version that generates completions for batches of conversations."""

    version_id: str | None = None

    @abstractmethod
    def load(self, model_dir: Path, version_id: str) -> None:
        """Load the Hugging Face folder ``model_dir``; called again to switch to another version."""

    def load_adapter(self, base_dir: Path, base_id: str, adapter_dir: Path, version_id: str) -> None:
        """Serve the adapter version ``version_id``: the full version ``base_id`` (loaded only if it
        is not the one loaded now) with the PEFT adapter in ``adapter_dir`` on it."""
        raise NotImplementedError(f"{type(self).__name__} does not serve adapter versions")

    @abstractmethod
    def generate(self, conversations: list[Conversation], params: SamplingParams) -> list[GenerationResult]:
        """One result per conversation, each with ``params.n`` completions (chat template applied)."""

    def generate_each(self, calls: list[tuple[list[Conversation], SamplingParams]]) -> list[list[GenerationResult]]:
        """Several ``generate`` calls, each with its own parameters (and seed). One after the
        other here; an engine that gains from larger batches (vLLM) runs them as one."""
        return [self.generate(conversations, params) for conversations, params in calls]

    @abstractmethod
    def choice_probabilities(self, conversations: list[Conversation], prefixes: list[str],
                             choices: tuple[str, ...]) -> list[list[float]]:
        """For each conversation whose assistant turn begins with ``prefixes[i]``: the model's
        probability of each single-token continuation in ``choices``, renormalised over them
        (a constrained next token, e.g. the digit of a judge's verdict)."""

    @abstractmethod
    def close(self) -> None:
        """Free the model; the engine may be loaded again afterwards."""

    def __enter__(self) -> GenerationEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require_loaded(self) -> None:
        if self.version_id is None:
            raise RuntimeError(f"{type(self).__name__}: no model loaded; call load() first")


def chat_prompt_ids(tokenizer, conversation: Conversation) -> list[int]:
    """The tokens a model is prompted with: the chat template up to the assistant's turn. The
    engines sample after exactly these, and the GRPO trainer scores the samples after them."""
    return tokenizer(tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False),
                     add_special_tokens=False)["input_ids"]


def assistant_prefix_text(tokenizer, conversation: Conversation, prefix: str) -> str:
    """The chat-templated prompt with the assistant's turn already begun with ``prefix``."""
    return tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False) + prefix


def single_token_ids(tokenizer, choices: tuple[str, ...]) -> list[int]:
    """Token ids of ``choices``; each must be exactly one token."""
    ids = []
    for choice in choices:
        toks = tokenizer.encode(choice, add_special_tokens=False)
        if len(toks) != 1:
            raise ValueError(f"choice {choice!r} is {len(toks)} tokens; choices must be single tokens")
        ids.append(toks[0])
    return ids


def create_engine(cfg: EngineConfig) -> GenerationEngine:
    """The engine named by ``cfg.kind``; its heavy imports happen here, not at module import."""
    if cfg.kind == "transformers":
        from srlm.models.engines.hf import TransformersEngine

        return TransformersEngine(cfg)
    if cfg.kind == "vllm":
        from srlm.models.engines.vllm import VLLMEngine

        return VLLMEngine(cfg)
    raise ValueError(f"engine.kind: unknown engine {cfg.kind!r}")
