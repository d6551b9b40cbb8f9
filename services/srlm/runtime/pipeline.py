"""How a service sits on the bus: a stage worker (consume, handle, produce), a follower that
reads topics from the beginning (the controller's view), a plain publisher, and a reader.

Topics are named by what they carry (``"prompts"``, ``"pairs"``...); the registry turns
that into ``<kafka.topic_prefix>.<what>``.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections import Counter
from contextlib import nullcontext
from typing import Callable, Iterable

from google.protobuf.message import Message
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from srlm.bus import Output, RecordProducer, TopicRegistry, Worker, read_to_end
from srlm.bus.envelope import DecodeFailure, decode_record
from srlm.bus.topics import ensure_topics
from srlm.config import SRLMConfig
from srlm.runtime import metrics
from srlm.runtime.model_host import ModelHost
from srlm.runtime.server import NOT_SERVING, ServiceHandle

log = logging.getLogger(__name__)

# (what, key, message) triples returned by stage handlers
StageOutputs = Iterable[tuple[str, str, Message]]


def instance_id(service: str) -> str:
    """Stable across restarts of the same process slot (so its transactional id fences and
    aborts the crashed predecessor's open transaction at once): ``$SRLM_INSTANCE_ID`` (a pod
    name) or the host name."""
    return os.environ.get("SRLM_INSTANCE_ID") or socket.gethostname()


class StageWorker:
    """Runs ``handler(message) -> [(what, key, message)]`` on every record of ``input_what``, or
    ``batch_handler(messages) -> [[(what, key, message)], ...]`` on each polled batch of up to
    ``kafka.batch_records`` (one engine call for all of them; a failing batch is retried
    record by record, so a poisonous record is dead-lettered alone)."""

    def __init__(self, service: str, config: SRLMConfig, input_what: str,
                 handler: Callable[[Message], StageOutputs] | None = None,
                 batch_handler: Callable[[list[Message]], list[StageOutputs]] | None = None) -> None:
        if (handler is None) == (batch_handler is None):
            raise ValueError("give exactly one of handler and batch_handler")
        self.service = service
        self.config = config
        self.topics = TopicRegistry.from_config(config.kafka)
        self.input = getattr(self.topics, input_what)
        self._handler = handler
        self._batch_handler = batch_handler
        self.host: ModelHost | None = None  # attach(): its engine calls are timed per record
        self.worker: Worker | None = None
        self.admission = None
        self.broker_reachable = True
        self._on_reachability: Callable[[], None] | None = None  # attach(): the health follows it
        self._thread: threading.Thread | None = None
        self._worker_exited = False

    def _handle(self, record) -> list[Output]:
        return self._handle_batch([record])[0]

    def _handle_batch(self, records: list) -> list[list[Output]]:
        metrics.RECORDS_IN.labels(self.service, self.input.name).inc(len(records))
        with metrics.BATCH_SECONDS.labels(self.service).time(), \
                (self.host.work() if self.host else nullcontext()) as work:
            if self._batch_handler is not None:
                results = list(self._batch_handler([r.value for r in records]))
            else:
                results = [self._handler(r.value) for r in records]
        batch = []
        for triples in results:
            outputs = [Output(getattr(self.topics, what), msg, key) for what, key, msg in triples]
            for out in outputs:
                metrics.RECORDS_OUT.labels(self.service, out.topic.name).inc()
                if work is not None and work.instance and "meta" in out.msg.DESCRIPTOR.fields_by_name:
                    out.msg.meta.work.CopyFrom(work)  # the engine time behind it, for the report's timeline
            batch.append(outputs)
        return batch

    def start(self) -> None:
        from srlm.runtime.admission import Admission

        ensure_topics(self.config.kafka, self.topics)
        self.admission = Admission(self.service, self.config)
        self.admission.runs.start()
        handlers = {"batch_handler": self._handle_batch} if self._batch_handler else {"handler": self._handle}
        self.worker = Worker(self.config.kafka, f"{self.config.kafka.topic_prefix}-{self.service}", self.input,
                             **handlers, service=self.service, instance_id=instance_id(self.service),
                             topics=self.topics, admit=self.admission)
        self._thread = threading.Thread(target=self._run, name=f"{self.service}-worker", daemon=True)
        self._thread.start()
        threading.Thread(target=self._watch, name=f"{self.service}-watch", daemon=True).start()

    def _run(self) -> None:
        try:
            self.worker.run()
        except Exception:  # noqa: BLE001 - the health check must show it
            log.exception("%s: worker stopped", self.service)
            metrics.ERRORS.labels(self.service, "worker").inc()
        finally:
            self._worker_exited = True
            if self._on_reachability is not None:
                self._on_reachability()  # a stopped worker serves nothing

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._worker_exited

    def stop(self, timeout_s: float = 120.0) -> None:
        """Finish the record in flight and commit it (or leave it to be consumed again)."""
        if self.worker is not None:
            self.worker.stop()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self.admission is not None:
            self.admission.runs.stop()

    def attach(self, handle: ServiceHandle, host: ModelHost | None, version_id: str | None) -> ServiceHandle:
        """Load the initial model, start consuming, and report health.

        Health "" is the process (its worker runs); the service's own name is SERVING once a
        model is loaded, so online calls are routed only to replicas that can answer them.
        """
        self.host = host
        if host is not None:
            from srlm.runtime.inference import initial_version

            wanted = initial_version(host, version_id or os.environ.get("SRLM_MODEL_VERSION"))
            if wanted:
                host.load(wanted)
        self.start()
        handle.stop_callbacks.append(self.stop)

        def health(_version: str | None = None) -> None:
            serving = self.broker_reachable and self.alive
            handle.set_serving(serving)
            if host is not None and serving and not host.version_id:
                for name in handle.service_names:
                    handle.health.set(name, NOT_SERVING)

        if host is not None:
            host.on_load.append(health)
        self._on_reachability = health
        health()
        return handle

    def _watch(self) -> None:
        """While the worker runs: its lag and dead letters to the metrics, and the broker's
        reachability to the health (NOT_SERVING after ``services.broker_lost_after_s``)."""
        lost_after = self.config.services.broker_lost_after_s
        check_s = min(5.0, lost_after / 2)
        lost_since = None
        reported: Counter = Counter()
        while self.alive:
            started = time.monotonic()
            stats = self.worker.stats  # the worker's own counts, as metrics
            metrics.CONSUMER_LAG.labels(self.service, self.input.name).set(stats.lag)
            for kind, count in (stats.dead_letter_kinds - reported).items():
                metrics.DEAD_LETTERS.labels(self.service, kind).inc(count)
            reported = Counter(stats.dead_letter_kinds)
            if self.admission.runs.reachable(timeout_s=check_s):
                lost_since = None
                reachable = True
            else:
                # counted from the first failed check's answer, not its start: the broker may
                # have been there when the check began, and NOT_SERVING must not come early
                now = time.monotonic()
                lost_since = lost_since or now
                reachable = now - lost_since < lost_after
            if reachable != self.broker_reachable:
                log.warning("%s: Kafka %s", self.service, "reachable again" if reachable else
                            f"unreachable for {lost_after:.0f}s: NOT_SERVING")
                self.broker_reachable = reachable
                if self._on_reachability is not None:
                    self._on_reachability()
            time.sleep(max(0.0, check_s - (time.monotonic() - started)))


class Publisher:
    """A non-transactional producer for control records (the controller's state and events),
    shared by threads: ``flush`` returns once everything sent before it is acknowledged."""

    def __init__(self, service: str, config: SRLMConfig) -> None:
        self.topics = TopicRegistry.from_config(config.kafka)
        self.service = service
        self._producer = RecordProducer(config.kafka, self.topics)
        self._lock = threading.Lock()

    def send(self, what: str, key: str, msg: Message) -> None:
        topic = getattr(self.topics, what)
        with self._lock:
            self._producer.send(topic, msg, key)
        metrics.RECORDS_OUT.labels(self.service, topic.name).inc()

    def flush(self) -> None:
        with self._lock:
            self._producer.flush()

    def close(self) -> None:
        self._producer.close()


def make_publisher(service: str, config: SRLMConfig) -> Publisher:
    return Publisher(service, config)


def read_topic(config: SRLMConfig, what: str) -> list[Message]:
    """Every committed record of a topic, from the beginning (values only)."""
    topic = getattr(TopicRegistry.from_config(config.kafka), what)
    try:
        return [r.value for r in read_to_end(config.kafka, topic)]
    except KeyError:
        return []  # the topic was never created: nothing was written to it


class TopicFollower:
    """Reads topics from the beginning, then follows them: ``callback(what, message)``.

    Outside any consumer group: every controller replica sees everything, and a restarted
    one rebuilds its view by reading again.
    """

    def __init__(self, service: str, config: SRLMConfig, whats: list[str],
                 callback: Callable[[str, Message], None]) -> None:
        self.config = config
        self.topics = TopicRegistry.from_config(config.kafka)
        self.by_name = {getattr(self.topics, w).name: (w, getattr(self.topics, w)) for w in whats}
        self.callback = callback
        self.service = service
        self._stop = threading.Event()
        self._caught_up = threading.Event()
        self._sync_requests: queue.SimpleQueue[threading.Event] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"{service}-follower", daemon=True)
        self._consumer: KafkaConsumer | None = None

    def start(self) -> None:
        ensure_topics(self.config.kafka, self.topics)
        cfg = self.config.kafka
        self._consumer = KafkaConsumer(**{**cfg.client_kwargs(), "client_id": f"{cfg.client_id}-{self.service}-follower"},
                                       group_id=None, enable_auto_commit=False, isolation_level="read_committed",
                                       auto_offset_reset="earliest")
        tps = [TopicPartition(name, p) for name in self.by_name
               for p in sorted(self._consumer.partitions_for_topic(name) or [])]
        self._consumer.assign(tps)
        self._consumer.seek_to_beginning(*tps)
        self._end = self._consumer.end_offsets(tps)
        self._thread.start()

    def _run(self) -> None:
        c = self._consumer
        syncs: list[tuple[threading.Event, dict]] = []  # (requester, end offsets when it asked)
        while not self._stop.is_set():
            try:
                while not self._sync_requests.empty():
                    syncs.append((self._sync_requests.get(), c.end_offsets(list(self._end))))
                polled = c.poll(timeout_ms=200)
            except Exception:  # noqa: BLE001 - the broker may be restarting; keep following
                log.warning("%s: poll failed; retrying", self.service, exc_info=True)
                time.sleep(1)
                continue
            for raws in polled.values():
                for raw in raws:
                    what, topic = self.by_name[raw.topic]
                    try:
                        record = decode_record(raw, topic, self.config.kafka.max_record_bytes)
                    except DecodeFailure as err:
                        log.warning("%s: skipping undecodable %s/%d/%d: %s", self.service, raw.topic,
                                    raw.partition, raw.offset, err)
                        continue
                    self.callback(what, record.value)
            if not self._caught_up.is_set() and self._reached(self._end):
                self._caught_up.set()
            for requester, end in syncs:
                if self._reached(end):
                    requester.set()
            syncs = [(requester, end) for requester, end in syncs if not requester.is_set()]

    def _reached(self, end: dict) -> bool:
        return all(self._consumer.position(tp) >= offset for tp, offset in end.items())

    def sync(self, timeout_s: float = 10.0) -> bool:
        """Block until every record written to the topics before this call has been passed to
        the callback; False if that took longer than ``timeout_s``."""
        done = threading.Event()
        self._sync_requests.put(done)
        return done.wait(timeout_s)

    def wait_caught_up(self, timeout_s: float = 120.0) -> None:
        if not self._caught_up.wait(timeout_s):
            raise TimeoutError(f"{self.service}: topics not read to their end in {timeout_s:.0f}s")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
