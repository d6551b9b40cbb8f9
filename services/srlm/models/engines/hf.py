"""Generation with Hugging Face transformers: the CPU fallback and the engine tests run on.

The n samples of each prompt are expanded into rows, rows are grouped by prompt length and
generated ``max_batch_size`` at a time with left padding. A seed makes a call reproducible:
the same conversations, parameters and seed give the same completions.
"""

from __future__ import annotations

import gc
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from srlm.models.engines.base import (
    Completion,
    Conversation,
    assistant_prefix_text,
    GenerationEngine,
    GenerationResult,
    SamplingParams,
    distinct_samples,
    fill_samples,
    single_token_ids,
    token_budget,
    truncate_at_stop,
    validate_conversations,
)

if TYPE_CHECKING:
    from srlm.config import EngineConfig

log = logging.getLogger(__name__)
# transformers' from_pretrained is not thread-safe (its meta-device init is process-wide):
# services sharing a process (tests, benchmarks) load one model at a time.
_LOAD_LOCK = threading.Lock()


def load_model(model_dir: Path, dtype: str):
    """``from_pretrained`` in ``dtype``, reading safetensors one tensor at a time.

    transformers memory-maps the checkpoint and keeps every page it touched until the load
    ends, so an fp32 checkpoint served in bf16 costs its full fp32 size on top (135M model:
    peak +0.8 GiB RSS). Reading each tensor with pread and casting it at once costs +0.3 GiB.
    """
    with _LOAD_LOCK:
        return _load_model(model_dir, dtype)


def _load_model(model_dir: Path, dtype: str):
    import torch
    import transformers
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    torch_dtype = getattr(torch, dtype)
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype)
    config = AutoConfig.from_pretrained(model_dir)
    state = {}
    for file in files:
        with safe_open(file, framework="pt", device="cpu", backend="pread") as fh:
            for key in fh.keys():
                tensor = fh.get_tensor(key)
                state[key] = tensor.to(torch_dtype) if tensor.is_floating_point() else tensor
    model_class = getattr(transformers, config.architectures[0])
    return model_class.from_pretrained(None, config=config, state_dict=state, dtype=torch_dtype)


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class TransformersEngine(GenerationEngine):
    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self.device = _resolve_device(cfg.device)
        self.model = None
        self.tokenizer = None
        self.model_dir: Path | None = None
        self.version_id: str | None = None
        self._lock = threading.Lock()  # one generate/load at a time (gRPC and Kafka threads share it)

    def load(self, model_dir: Path, version_id: str) -> None:
        """Free the current version, then load ``model_dir``: never two models in memory.

        If the new version fails to load, the previous one is loaded again and the error raised.
        """
        with self._lock:
            previous = (self.model_dir, self.version_id)
            self._unload()
            try:
                self._load(Path(model_dir), version_id)
            except Exception:
                if previous[1] is not None:
                    log.exception("loading %s failed; serving %s again", version_id, previous[1])
                    self._load(*previous)
                raise
        log.info("transformers engine serving %s from %s on %s (%s)", version_id, model_dir, self.device,
                 self.cfg.dtype)

    def _load(self, model_dir: Path, version_id: str) -> None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = load_model(model_dir, self.cfg.dtype).to(self.device).eval()
        self.model, self.tokenizer, self.model_dir, self.version_id = model, tokenizer, model_dir, version_id

    def _unload(self) -> None:
        self.model = self.tokenizer = self.model_dir = self.version_id = None
        gc.collect()

    def close(self) -> None:
        with self._lock:
            self._unload()

    def generate(self, conversations: list[Conversation], params: SamplingParams) -> list[GenerationResult]:
        import torch

        validate_conversations(conversations)
        with self._lock, torch.inference_mode():
            self._require_loaded()
            tok = self.tokenizer
            prompt_ids = [
                tok(tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False),
                    add_special_tokens=False)["input_ids"]
                for conv in conversations
            ]
            budgets = [token_budget(len(ids), params.max_tokens, self.cfg.max_model_len) for ids in prompt_ids]
            if params.seed is not None:
                torch.manual_seed(params.seed)
            # Rows are (prompt index, sample index); similar lengths together waste less padding.
            order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
            samples = distinct_samples(params)
            rows = [(i, k) for i in order for k in range(samples)]
            out: list[list[Completion]] = [[None] * samples for _ in prompt_ids]  # type: ignore[list-item]
            for start in range(0, len(rows), self.cfg.max_batch_size):
                chunk = rows[start:start + self.cfg.max_batch_size]
                completions = self._generate_rows([prompt_ids[i] for i, _ in chunk],
                                                  [budgets[i] for i, _ in chunk], params)
                for (i, k), completion in zip(chunk, completions):
                    out[i][k] = completion
        return [GenerationResult(prompt_tokens=len(ids), completions=fill_samples(comps, params.n))
                for ids, comps in zip(prompt_ids, out)]

    def choice_probabilities(self, conversations: list[Conversation], prefixes: list[str],
                             choices: tuple[str, ...]) -> list[list[float]]:
        import torch

        validate_conversations(conversations)
        with self._lock, torch.inference_mode():
            self._require_loaded()
            tok = self.tokenizer
            choice_ids = single_token_ids(tok, choices)
            texts = [assistant_prefix_text(tok, c, p) for c, p in zip(conversations, prefixes, strict=True)]
            out: list[list[float]] = []
            for start in range(0, len(texts), self.cfg.max_batch_size):
                enc = tok([t for t in texts[start:start + self.cfg.max_batch_size]], add_special_tokens=False,
                          return_tensors="pt", padding=True).to(self.device)
                position_ids = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
                logits = self.model(**enc, position_ids=position_ids).logits[:, -1].float()
                probs = torch.softmax(logits[:, choice_ids], dim=-1)
                out += probs.tolist()
            return out

    def _generate_rows(self, inputs: list[list[int]], budgets: list[int],
                       params: SamplingParams) -> list[Completion]:
        from transformers import GenerationConfig

        tok = self.tokenizer
        batch = tok.pad({"input_ids": inputs}, padding=True, return_tensors="pt").to(self.device)
        sample = params.temperature > 0
        gen_cfg = GenerationConfig(
            max_new_tokens=max(budgets),
            do_sample=sample,
            temperature=params.temperature if sample else None,
            top_p=params.top_p if sample else None,
            top_k=0 if sample else None,  # transformers adds top_k=50 unless told; vLLM and the paper use none
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            stop_strings=list(params.stop) or None,
        )
        generated = self.model.generate(**batch, generation_config=gen_cfg, tokenizer=tok)
        new_tokens = generated[:, batch["input_ids"].shape[1]:].tolist()
        return [self._completion(tokens, budget, params.stop) for tokens, budget in zip(new_tokens, budgets)]

    def _completion(self, tokens: list[int], budget: int, stop: tuple[str, ...]) -> Completion:
        eos = self.tokenizer.eos_token_id
        if eos in tokens[:budget]:
            tokens, finish = tokens[:tokens.index(eos) + 1], "stop"  # the EOS token counts, as in vLLM
        else:
            tokens, finish = tokens[:budget], "length"
        text = self._decode(tokens)
        if stop:
            text, hit = truncate_at_stop(text, stop)
            if hit:
                tokens, finish = tokens[:self._tokens_until_stop(tokens, stop)], "stop"
        return Completion(text=text, num_tokens=len(tokens), finish_reason=finish)

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _tokens_until_stop(self, tokens: list[int], stop: tuple[str, ...]) -> int:
        """The shortest prefix whose text contains a stop string (binary search on its length)."""
        lo, hi = 1, len(tokens)
        while lo < hi:
            mid = (lo + hi) // 2
            if truncate_at_stop(self._decode(tokens[:mid]), stop)[1]:
                hi = mid
            else:
                lo = mid + 1
        return lo
