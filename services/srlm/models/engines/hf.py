"""Generation with Hugging Face transformers: the CPU fallback and the engine tests run on.

The n samples of each prompt are expanded into rows, rows are grouped by prompt length and
generated ``max_batch_size`` at a time with left padding; the rows of one prompt share one
prefill of it, and top-p sampling is ``NucleusSampler``'s. A seed makes a call reproducible:
the same conversations, parameters and seed give the same completions.
"""

from __future__ import annotations

import functools
import gc
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from srlm.models.engines.base import (
    Completion,
    Conversation,
    assistant_prefix_text,
    chat_prompt_ids,
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
from srlm.runtime.precision import engine_dtype, resolve_device

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


DECODE_ATTENTION = "srlm_cpu_decode"


def decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' attention interface: a decode step (one query token per row) as two
    matmuls per group of query heads sharing a KV head; anything else by SDPA.

    On a CPU, torch's SDPA takes ~14 ms a layer for a decode step of 15 rows over 1,100 cached
    tokens (judge prompts), these matmuls in fp32 ~2.4 ms: the judge's decode steps ran ~6x
    slower than they need to, and batching rows did not pay."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.shape[2] != 1 or query.device.type != "cpu" or dropout:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    rows, heads, _, dim = query.shape
    groups = key.shape[1]
    # in fp32, as SDPA accumulates (an fp32 engine gives exactly SDPA's tokens)
    grouped = query.view(rows, groups, heads // groups, dim).float()
    scores = torch.matmul(grouped, key.transpose(-1, -2).float()) * (dim ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:  # SDPA's mask [rows, 1, 1, keys]: True (or 0) where a key may be seen
        mask = attention_mask[..., -key.shape[2]:]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    out = torch.matmul(torch.softmax(scores, dim=-1), value.float())
    return out.to(query.dtype).reshape(rows, 1, heads, dim), None


@functools.cache
def _register_decode_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(DECODE_ATTENTION, decode_attention)
    AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)


class SampledLogprobs:
    """Records, as a logits processor placed first, the log-probability of each sampled token
    under the model at the sampling temperature (top-p aside): what the GRPO trainer computes
    for the same tokens, so their ratio measures how far the trained weights have moved.

    A step's processor call sees the token chosen at the previous step as the last input id;
    the last token's is taken by ``finish``. One step's log-softmax is kept, not the whole
    generation's logits."""

    def __init__(self, temperature: float):
        self.temperature = temperature or 1.0  # greedy: the model's own distribution
        self._previous = None
        self._steps: list = []

    def __call__(self, input_ids, scores):
        import torch

        if self._previous is not None:
            self._steps.append(self._previous.gather(1, input_ids[:, -1:]))
        self._previous = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def finish(self, new_tokens) -> list[list[float]]:
        import torch

        if self._previous is None or not new_tokens.shape[1]:
            return [[] for _ in range(new_tokens.shape[0])]
        steps = self._steps + [self._previous.gather(1, new_tokens[:, -1:])]
        return torch.cat(steps, dim=1).tolist()


class NucleusSampler:
    """Top-p sampling as a logits processor: draws the next token itself and leaves only that
    token finite, so ``generate``'s greedy step takes it.

    transformers' own sampling sorts the whole vocabulary for top-p and draws one exponential
    per vocabulary entry (``multinomial``): at SmolLM2's 49,152 tokens, a third of a decode step
    at batch 16 on 2 CPU cores. The nucleus almost always lies among the top ``candidates``
    logits; a batch where it does not is sorted in full, so the result is exact top-p (keep the
    most likely tokens until their mass reaches ``top_p``, as vLLM does).
    """

    def __init__(self, temperature: float, top_p: float, candidates: int = 256):
        self.temperature, self.top_p, self.candidates = temperature, top_p, candidates

    def __call__(self, input_ids, scores):
        import torch

        logits = scores.float() / self.temperature
        if self.top_p >= 1.0:
            token = torch.multinomial(torch.softmax(logits, dim=-1), 1)
        else:
            log_norm = torch.logsumexp(logits, dim=-1, keepdim=True)
            top, index = logits.topk(min(self.candidates, logits.size(-1)), dim=-1)
            if bool(((top - log_norm).exp().sum(dim=-1) < self.top_p).any()):
                top, index = logits.sort(dim=-1, descending=True)
            probs = (top - log_norm).exp()
            probs = probs.masked_fill(probs.cumsum(dim=-1) - probs >= self.top_p, 0.0)  # past the mass
            token = index.gather(-1, torch.multinomial(probs, 1))
        return torch.full_like(scores, float("-inf")).scatter_(-1, token, 0.0)


def _group_consecutive(keys: list) -> list[int]:
    """Each row's group: a run of consecutive rows with equal keys is one group."""
    groups: list[int] = []
    for i, key in enumerate(keys):
        groups.append(groups[-1] + (key != keys[i - 1]) if groups else 0)
    return groups


def _length_buckets(lengths: list[int], waste: float = 0.1, slack: int = 256) -> list[list[int]]:
    """Indices of ``lengths`` in buckets of similar length, shortest first: a bucket padded to
    its longest wastes at most ``waste`` of its padded tokens, or ``slack`` tokens (short
    sequences are cheaper together than one forward each)."""
    buckets: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if buckets:
            members = buckets[-1] + [i]
            padded = lengths[i] * len(members)
            if padded - sum(lengths[j] for j in members) <= max(waste * padded, slack):
                buckets[-1] = members
                continue
        buckets.append([i])
    return buckets


def _common_prefix(rows: list[list[int]]) -> list[int]:
    n = 0
    while all(len(r) > n and r[n] == rows[0][n] for r in rows):
        n += 1
    return rows[0][:n]


class TransformersEngine(GenerationEngine):
    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dtype = engine_dtype(cfg.dtype, self.device)
        self.model = None
        self.tokenizer = None
        self.version_id: str | None = None
        self._served: tuple | None = None  # (base dir, base id, adapter dir or None, version id)
        self._lock = threading.Lock()  # one generate/load at a time (gRPC and Kafka threads share it)

    def load(self, model_dir: Path, version_id: str) -> None:
        """Free the current version, then load ``model_dir``: never two models in memory (the
        base of the adapter served now is not loaded again).

        If the new version fails to load, the previous one is loaded again and the error raised.
        """
        self._switch(Path(model_dir), version_id, None, version_id)

    def load_adapter(self, base_dir: Path, base_id: str, adapter_dir: Path, version_id: str) -> None:
        """The adapter on the loaded base, unmerged (PEFT): switching adapters reloads nothing."""
        self._switch(Path(base_dir), base_id, Path(adapter_dir), version_id)

    def _switch(self, *served) -> None:
        with self._lock:
            previous = self._served
            try:
                self._serve(*served)
            except Exception:
                self._unload()  # a failed adapter load may have left layers injected into the base
                if previous is not None:
                    log.exception("loading %s failed; serving %s again", served[-1], previous[-1])
                    self._serve(*previous)
                raise
        log.info("transformers engine serving %s from %s on %s (%s)", served[-1], served[2] or served[0],
                 self.device, self.dtype)

    def _serve(self, base_dir: Path, base_id: str, adapter_dir: Path | None, version_id: str) -> None:
        from srlm.models.adapters import load_with_adapter

        if self._served is None or self._served[1] != base_id:
            self._unload()
            self._load(base_dir)
        elif self._served[2] is not None:
            self.model = self.model.unload()  # the base without the adapter served before (not merged)
        self._served, self.version_id = (base_dir, base_id, None, base_id), base_id
        if adapter_dir is not None:
            self.model = load_with_adapter(self.model, adapter_dir).eval()
            self._served, self.version_id = (base_dir, base_id, adapter_dir, version_id), version_id

    def _load(self, model_dir: Path) -> None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = load_model(model_dir, self.dtype).to(self.device).eval()
        if self.device == "cpu" and model.config._attn_implementation == "sdpa":
            _register_decode_attention()
            model.set_attn_implementation(DECODE_ATTENTION)
        self.model, self.tokenizer = model, tokenizer

    def _unload(self) -> None:
        self.model = self.tokenizer = self.version_id = self._served = None
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
            prompt_ids = [chat_prompt_ids(tok, conv) for conv in conversations]
            budgets = [token_budget(len(ids), params.max_tokens, self.cfg.max_model_len) for ids in prompt_ids]
            if params.seed is not None:
                torch.manual_seed(params.seed)
            # Rows are (prompt index, sample index); similar lengths together waste less padding,
            # and a prompt's samples stay in one batch (they share its prefill).
            order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
            samples = distinct_samples(params)
            per_batch = max(1, self.cfg.max_batch_size // samples)
            out: list[list[Completion]] = [[None] * samples for _ in prompt_ids]  # type: ignore[list-item]
            for start in range(0, len(order), per_batch):
                chunk = [(i, k) for i in order[start:start + per_batch] for k in range(samples)]
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
            rows = [tok(assistant_prefix_text(tok, c, p), add_special_tokens=False)["input_ids"]
                    for c, p in zip(conversations, prefixes, strict=True)]
            groups = _group_consecutive([repr(c) for c in conversations])
            out: list[list[float]] = []
            for start in range(0, len(rows), self.cfg.max_batch_size):
                end = start + self.cfg.max_batch_size
                logits = self._last_logits(rows[start:end], groups[start:end])
                out += torch.softmax(logits[:, choice_ids].float(), dim=-1).tolist()
            return out

    def _last_logits(self, rows: list[list[int]], groups: list[int]):
        """Next-token logits after each row. A group's rows (one judge prompt, k judgments)
        share one forward pass over their common beginning."""
        import torch

        row_of = [g - groups[0] for g in groups]
        members = [[r for r, g in zip(rows, row_of) if g == u] for u in range(row_of[-1] + 1)]
        shared = [_common_prefix([r[:-1] for r in m]) for m in members]  # each row keeps its last token
        prefix = self.tokenizer.pad({"input_ids": shared}, padding=True, return_tensors="pt").to(self.device)
        cache = self._prefill(prefix["input_ids"], prefix["attention_mask"], row_of)
        rests = [row[len(shared[u]):] for row, u in zip(rows, row_of)]
        width = max(map(len, rests))
        rest_ids = torch.tensor([r + [self.tokenizer.pad_token_id] * (width - len(r)) for r in rests],
                                device=self.device)
        rest_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rests], device=self.device)
        mask = torch.cat([prefix["attention_mask"][row_of], rest_mask], dim=1)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)[:, -width:]
        logits = self.model(input_ids=rest_ids, attention_mask=mask, position_ids=position_ids,
                            past_key_values=cache, use_cache=True).logits
        last = torch.tensor([len(r) - 1 for r in rests], device=self.device)
        return logits[torch.arange(len(rests), device=self.device), last]

    def _prefill(self, ids, mask, row_of: list[int]):
        """The KV cache of left-padded ``ids``, computed once per sequence and then repeated
        for each row that begins with it (``row_of[row]`` is the row's sequence).

        Sequences run in buckets of similar length, each padded only to its own longest, and
        their caches are left-padded into one batch for the decode (judge prompts of 400 to
        1,250 tokens padded to one width spent most of a batch's prefill on padding)."""
        import torch
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        width = ids.shape[1]
        if not width:
            return cache
        keys: list = []
        values: list = []
        for bucket in _length_buckets(mask.sum(-1).tolist()):
            rows = torch.tensor(bucket, device=self.device)
            sub_mask = mask[rows]
            start = int((sub_mask.sum(0) > 0).nonzero()[0])  # left-padded: the bucket's columns
            sub_mask = sub_mask[:, start:]
            part = DynamicCache(config=self.model.config)
            self.model(input_ids=ids[rows][:, start:], attention_mask=sub_mask,
                       position_ids=(sub_mask.cumsum(-1) - 1).clamp(min=0), past_key_values=part, use_cache=True)
            for n, layer in enumerate(part.layers):
                if n == len(keys):
                    shape = (len(mask), *layer.keys.shape[1:2], width, layer.keys.shape[-1])
                    keys.append(layer.keys.new_zeros(shape))
                    values.append(layer.values.new_zeros(shape))
                keys[n][rows, :, start:] = layer.keys
                values[n][rows, :, start:] = layer.values
        index = torch.tensor(row_of, device=self.device)
        for n, (k, v) in enumerate(zip(keys, values)):
            cache.update(k[index], v[index], n)
        return cache

    def _generate_rows(self, inputs: list[list[int]], budgets: list[int],
                       params: SamplingParams) -> list[Completion]:
        from transformers import GenerationConfig, LogitsProcessorList

        tok = self.tokenizer
        # The n samples of a prompt share one prefill of it (all but its last token, which
        # generate feeds itself).
        row_of = _group_consecutive([tuple(ids) for ids in inputs])
        unique = [inputs[row_of.index(u)] for u in range(row_of[-1] + 1)]
        batch = tok.pad({"input_ids": unique}, padding=True, return_tensors="pt").to(self.device)
        cache = self._prefill(batch["input_ids"][:, :-1], batch["attention_mask"][:, :-1], row_of)
        gen_cfg = GenerationConfig(
            max_new_tokens=max(budgets),
            do_sample=False,  # sampling (T > 0) is NucleusSampler's; no top-k, as in vLLM and the paper
            top_k=None, top_p=None, temperature=None,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            stop_strings=list(params.stop) or None,
        )
        logprobs = SampledLogprobs(params.temperature)
        processors = LogitsProcessorList(
            [logprobs] + ([NucleusSampler(params.temperature, params.top_p)] if params.temperature > 0 else []))
        generated = self.model.generate(input_ids=batch["input_ids"][row_of],
                                        attention_mask=batch["attention_mask"][row_of], past_key_values=cache,
                                        generation_config=gen_cfg, logits_processor=processors, tokenizer=tok)
        new_tokens = generated[:, batch["input_ids"].shape[1]:]
        return [self._completion(tokens, token_logprobs, budget, params.stop)
                for tokens, token_logprobs, budget in zip(new_tokens.tolist(), logprobs.finish(new_tokens), budgets)]

    def _completion(self, tokens: list[int], logprobs: list[float], budget: int,
                    stop: tuple[str, ...]) -> Completion:
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
        return Completion(text=text, num_tokens=len(tokens), finish_reason=finish, token_ids=tokens,
                          logprobs=logprobs[:len(tokens)])

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
