"""The model version an inference service serves, with hot reload.

Records name the model version that must process them (``meta.model_version``), so a
service switches to that version before it generates; gRPC ``LoadModel`` switches it
explicitly (promotion). Generation and reload share one lock: a reload waits for the
batch in flight and no batch ever runs on half a model.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from srlm.config import EngineConfig, SRLMConfig
from srlm.models.engines import Conversation, GenerationEngine, GenerationResult, SamplingParams, create_engine
from srlm.models.store import ModelStore
from srlm.runtime import metrics
from srlm.runtime.memory import release_freed_memory
from srlm.v1 import records_pb2

log = logging.getLogger(__name__)


class ModelHost:
    def __init__(self, service: str, config: SRLMConfig, store: ModelStore | None = None,
                 engine: GenerationEngine | None = None) -> None:
        self.service = service
        self.store = store or ModelStore(config.model_store.root)
        self._engine_config = config.engine_for(service)
        self._engine = engine
        self._lock = threading.RLock()
        self.version_id: str | None = None
        self.base_id: str | None = None  # the full version loaded: version_id, or an adapter version's base
        self.on_load: list[Callable[[str], None]] = []  # e.g. health: SERVING once a model is loaded
        self.instance = f"{os.environ.get('POD_NAME') or socket.gethostname()}/{os.getpid()}"
        self._spans = threading.local()  # (start, end) wall times of the engine calls inside work()

    @property
    def engine_config(self) -> EngineConfig:
        """The engine this host runs (its service's ``engine.services`` choice)."""
        return self._engine_config

    def _get_engine(self) -> GenerationEngine:
        if self._engine is None:
            self._engine = create_engine(self._engine_config)
        return self._engine

    def load(self, version_id: str) -> float:
        """Serve ``version_id`` (verified against its checksums); returns the load time in s.

        Raises ``VersionNotFound`` / ``CorruptVersion`` from the store.
        """
        with self._lock:
            if version_id == self.version_id:
                return 0.0
            path = self.store.path(version_id, verify=True)
            base = self.store.adapter_base(version_id)
            start = time.perf_counter()
            if base:  # an adapter version: a base already loaded is neither read nor checked again
                base_path = self.store.path(base, verify=base != self.base_id)
                self._get_engine().load_adapter(base_path, base, path, version_id)
            else:
                self._get_engine().load(path, version_id)
            seconds = time.perf_counter() - start
            self.version_id, self.base_id = version_id, base or version_id
            release_freed_memory()  # the replaced version's weights
        metrics.MODEL_LOAD_SECONDS.labels(self.service).observe(seconds)
        metrics.MODEL_VERSION.info({"service": self.service, "version": version_id})
        log.info("%s: serving %s (loaded in %.1fs)", self.service, version_id, seconds)
        for callback in self.on_load:
            callback(version_id)
        return seconds

    def generate(self, conversations: list[Conversation], params: SamplingParams,
                 version_id: str | None = None) -> tuple[str, list[GenerationResult]]:
        """Generate with ``version_id`` (loading it first if needed) or the current version."""
        served, [results] = self.generate_each([(conversations, params)], version_id)
        return served, results

    def generate_each(self, calls: list[tuple[list[Conversation], SamplingParams]], version_id: str | None = None
                      ) -> tuple[str, list[list[GenerationResult]]]:
        """Several ``generate`` calls with one version, as one engine call where the engine
        batches across calls (``GenerationEngine.generate_each``)."""
        with self._lock:
            if version_id:
                self.load(version_id)
            if self.version_id is None:
                raise RuntimeError(f"{self.service}: no model version loaded")
            engine = self._get_engine()
            with self._engine_call() as span:
                results = engine.generate_each(calls) if len(calls) > 1 else [engine.generate(*calls[0])]
            elapsed = span[1] - span[0]
            served = self.version_id
        tokens = sum(c.num_tokens for call in results for r in call for c in r.completions)
        metrics.GENERATED_TOKENS.labels(self.service).inc(tokens)
        if elapsed > 0:
            metrics.TOKENS_PER_SECOND.labels(self.service).set(tokens / elapsed)
        return served, results

    def choice_probabilities(self, conversations: list[Conversation], prefixes: list[str],
                             choices: tuple[str, ...]) -> list[list[float]]:
        with self._lock:
            if self.version_id is None:
                raise RuntimeError(f"{self.service}: no model version loaded")
            with self._engine_call():
                return self._get_engine().choice_probabilities(conversations, prefixes, choices)

    def label_probabilities(self, conversations: list[Conversation], prefixes: list[str], labels: tuple[str, ...]
                            ) -> tuple[list[list[float]], list[str], tuple[str, ...]]:
        """Probabilities of one-token ``labels`` (e.g. "A"/"B" or the digits of a verdict) after each
        prefix: as " A" where the tokenizer has a single token for it (Llama 3), else as a space
        token then "A" (SmolLM2, Llama 2). Returns the probabilities and the prefixes and
        choices that were used, so a caller can write the chosen text."""
        try:
            return self.choice_probabilities(conversations, prefixes, tuple(f" {x}" for x in labels)), prefixes, \
                tuple(f" {x}" for x in labels)
        except ValueError:
            spaced = [p + " " for p in prefixes]
            return self.choice_probabilities(conversations, spaced, labels), spaced, labels

    @contextmanager
    def work(self) -> Iterator[records_pb2.EngineWork]:
        """The span of the engine calls this thread makes inside, filled in on exit: what a
        record's ``meta.work`` says (unset if no call was made)."""
        work = records_pb2.EngineWork()
        self._spans.calls = []
        try:
            yield work
        finally:
            calls, self._spans.calls = self._spans.calls, None
            if calls:
                work.instance = self.instance
                work.started_at.FromNanoseconds(int(calls[0][0] * 1e9))
                work.ended_at.FromNanoseconds(int(calls[-1][1] * 1e9))

    @contextmanager
    def _engine_call(self) -> Iterator[list[float]]:
        span = [time.time(), 0.0]
        try:
            yield span
        finally:
            span[1] = time.time()
            if getattr(self._spans, "calls", None) is not None:
                self._spans.calls.append(tuple(span))
            # A call's activations and KV cache, kept by malloc, would be held while the service
            # waits for its next stage, beside the stage that runs now (0.8-1.2 GiB after scoring 32
            # judge prompts on transformers); ~0.2 s, outside the measured span.
            release_freed_memory()

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.close()
                self._engine = None
            self.version_id = self.base_id = None
