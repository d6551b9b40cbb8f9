"""The consumer worker loop every stage runs: poll a batch, decode, handle, produce, commit.

Delivery (``kafka.exactly_once``, default on): a batch's outputs, its dead letters and the
input offsets are written in ONE Kafka transaction (kafka-python 3: ``transactional_id``,
``send_offsets_to_transaction`` with the consumer's group metadata, KIP-447). A crash before
the commit aborts the transaction: read_committed consumers never see its outputs, and the
inputs are consumed again. With ``exactly_once: false`` outputs are flushed (acks=all)
BEFORE the offsets are committed: at-least-once, and replays are recognised downstream by
their deterministic ids (``srlm.bus.dedupe``).

A record without srlm's schema header (``no_schema``), that cannot be decoded (``decode``),
carries another schema (``schema``), is larger than ``max_record_bytes`` (``oversized``), that
the worker's ``admit`` check refuses (``rejected``: e.g. an unknown run) or whose handler keeps
failing (``handler``, after ``max_attempts`` tries with exponential backoff) becomes a
``DeadLetter`` on the dead-letter topic, and the worker carries on with the records after it.

A poll fetches up to ``max_poll_records``; the first ``batch_records`` of them that pass the
checks are handled and published with the dead letters among them in one transaction, and the
rest is fetched again by the next poll. Records refused before any handler cost almost nothing:
a poison flood clears in a few large transactions.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

from google.protobuf.message import Message
from kafka import KafkaConsumer
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError, ProducerFencedError
from kafka.structs import OffsetAndMetadata, TopicPartition

from srlm.bus.envelope import HEADER_TRACE, DecodeFailure, Record, decode_headers, decode_record, own_trace
from srlm.bus.producer import RecordProducer
from srlm.bus.topics import Topic, TopicRegistry
from srlm.config import KafkaConfig
from srlm.failpoints import armed, failpoint
from srlm.v1 import records_pb2 as pb

log = logging.getLogger(__name__)

MAX_FENCED_IN_A_ROW = 3
LAG_EVERY_S = 10.0
POLL_BACKOFF_S = (1.0, 16.0)  # first and longest wait after a failed poll


@dataclass(frozen=True)
class Output:
    """A record a handler wants produced."""

    topic: str | Topic
    msg: Message
    key: str | bytes | None = None  # None: the record's id
    headers: Mapping[str, str] | None = None


class RejectRecord(Exception):
    """Raised by a handler for a record that can never succeed: dead-lettered without retries."""


Handler = Callable[[Record], Iterable[Output]]
BatchHandler = Callable[[list[Record]], Sequence[Iterable[Output]]]
Admit = Callable[[Record], None]  # raises RejectRecord for a record no handler may see


@dataclass
class WorkerStats:
    batches: int = 0
    records: int = 0
    outputs: int = 0
    dead_letters: int = 0
    retries: int = 0
    publish_failures: int = 0
    dead_letter_kinds: Counter = field(default_factory=Counter)
    lag: int = 0  # records on the assigned partitions not yet consumed (refreshed every LAG_EVERY_S)


class _AssignmentListener(ConsumerRebalanceListener):
    """Keeps ``Worker.assigned`` current (readable from other threads)."""

    def __init__(self, worker: "Worker") -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked) -> None:
        self.worker.assigned = frozenset()

    def on_partitions_assigned(self, assigned) -> None:
        self.worker.assigned = frozenset(assigned)
        log.info("%s assigned %s", self.worker.instance_id, sorted((tp.topic, tp.partition) for tp in assigned))


class Worker:
    """Consumes ``input_topic`` in consumer group ``group_id`` and runs ``handler`` per record
    (or ``batch_handler`` per polled batch, e.g. to batch generation).

    ``instance_id`` names this member; with transactions it makes the ``transactional_id``
    (``<group>.<instance>``), so give a restarted process the same one (a StatefulSet pod name)
    to abort its predecessor's open transaction at once instead of after
    ``transaction_timeout_ms``.
    """

    def __init__(self, cfg: KafkaConfig, group_id: str, input_topic: str | Topic,
                 handler: Handler | None = None, producer: RecordProducer | None = None, *,
                 batch_handler: BatchHandler | None = None, service: str | None = None,
                 instance_id: str | None = None, topics: TopicRegistry | None = None,
                 admit: Admit | None = None) -> None:
        if (handler is None) == (batch_handler is None):
            raise ValueError("give exactly one of handler and batch_handler")
        self.cfg = cfg
        self.group_id = group_id
        self.topics = topics or TopicRegistry.from_config(cfg)
        self.input = input_topic if isinstance(input_topic, Topic) else self.topics.by_name(input_topic)
        self.handler, self.batch_handler = handler, batch_handler
        self.admit = admit
        self.service = service or group_id
        self.instance_id = instance_id or f"{socket.gethostname()}-{os.getpid()}"
        self._owns_producer = producer is None
        self.producer = producer or self._new_producer()
        self._consumer = KafkaConsumer(
            **{**cfg.client_kwargs(), "client_id": f"{cfg.client_id}-{self.service}-{self.instance_id}"},
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",  # never act on an aborted transaction's records
            max_poll_records=cfg.max_poll_records,
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=max(100, cfg.session_timeout_ms // 3),
            max_poll_interval_ms=cfg.max_poll_interval_ms,
        )
        self.assigned: frozenset[TopicPartition] = frozenset()
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self._fenced_in_a_row = 0

    def _new_producer(self) -> RecordProducer:
        txn_id = f"{self.group_id}.{self.instance_id}" if self.cfg.exactly_once else None
        return RecordProducer(self.cfg, self.topics, transactional_id=txn_id)

    # ------------------------------------------------------------------ loop

    def run(self, handle_signals: bool = False) -> None:
        """Poll and process until ``stop()`` (or SIGTERM/SIGINT with ``handle_signals``)."""
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        self._consumer.subscribe([self.input.name], listener=_AssignmentListener(self))
        lag_at, backoff_s = 0.0, POLL_BACKOFF_S[0]
        try:
            while not self._stop.is_set():
                try:
                    polled = self._consumer.poll(timeout_ms=self.cfg.poll_timeout_ms,
                                                 max_records=self.cfg.max_poll_records)
                except KafkaError as err:  # the broker is away (restarting, unreachable): wait for it
                    log.warning("%s: poll failed (%r); retrying in %.0fs", self.service, err, backoff_s)
                    self._stop.wait(backoff_s)
                    backoff_s = min(2 * backoff_s, POLL_BACKOFF_S[1])
                    continue
                backoff_s = POLL_BACKOFF_S[0]
                raws = [raw for records in polled.values() for raw in records]
                if raws:
                    self.process(raws)
                if time.monotonic() - lag_at >= LAG_EVERY_S:
                    lag_at = time.monotonic()
                    self._measure_lag()
        finally:
            self.stats.lag = 0
            self.close()

    def _measure_lag(self) -> None:
        assigned = list(self._consumer.assignment())
        try:
            end = self._consumer.end_offsets(assigned) if assigned else {}
            self.stats.lag = sum(max(0, offset - self._consumer.position(tp)) for tp, offset in end.items())
        except KafkaError as err:  # the broker may be away; the next poll deals with it
            log.debug("lag not measured: %r", err)

    def stop(self) -> None:
        """Finish the batch in flight, commit it, leave the group."""
        self._stop.set()

    def close(self) -> None:
        self._consumer.close(autocommit=False)
        if self._owns_producer:
            self.producer.close()

    # ------------------------------------------------------------------ one batch

    def process(self, raws: list) -> None:
        """Check and decode a polled batch; handle up to ``batch_records`` admitted records and
        publish them with the dead letters before and among them in one transaction. What
        follows them is fetched again by the next poll: a poll never keeps the handler busy for
        more than one batch (``max_poll_interval_ms``, a prompt ``stop()``)."""
        batch: list[tuple[object, Record | Output]] = []
        admitted = 0
        for i, raw in enumerate(raws):
            try:
                item = self._admitted(raw)
            except Exception as err:  # the check cannot decide now (e.g. its data is unreachable)
                log.warning("cannot check %s/%d/%d (%r); the batch is retried", raw.topic, raw.partition,
                            raw.offset, err)
                self._rewind(raws)  # nothing of this poll was published yet
                time.sleep(self.cfg.retry_backoff_s)
                return
            batch.append((raw, item))
            admitted += isinstance(item, Record)
            if admitted == self.cfg.batch_records and i + 1 < len(raws):
                published = self._process_batch(batch)
                self._rewind(raws[i + 1:] if published else raws)
                return
        self._process_batch(batch)

    def _admitted(self, raw) -> Record | Output:
        """The decoded record, or its dead letter when it may not reach the handler."""
        try:
            record = decode_record(raw, self.input, self.cfg.max_record_bytes)
        except DecodeFailure as err:
            return self._dead_letter(raw, err.kind, str(err), attempts=0)
        if self.admit is not None:
            try:
                self.admit(record)
            except RejectRecord as err:
                return self._dead_letter(raw, "rejected", str(err), attempts=0)
        return record

    def _process_batch(self, batch: list[tuple[object, Record | Output]]) -> bool:
        outputs = [item for _, item in batch if isinstance(item, Output)]
        if outputs:
            kinds = Counter(o.msg.error_type for o in outputs)
            log.warning("%d of %d records refused before any handler: %s", len(outputs), len(batch), dict(kinds))
        for result in self._handle([(raw, item) for raw, item in batch if isinstance(item, Record)]):
            outputs.extend(result)
        raws = [raw for raw, _ in batch]
        if not self._publish(outputs, raws):
            return False
        self.stats.batches += 1
        self.stats.records += len(raws)
        dead = [o.msg.error_type for o in outputs if o.msg.DESCRIPTOR is pb.DeadLetter.DESCRIPTOR]
        self.stats.dead_letters += len(dead)
        self.stats.dead_letter_kinds.update(dead)
        self.stats.outputs += len(outputs)
        return True

    def _handle(self, decoded: list[tuple[object, Record]]) -> list[list[Output]]:
        if not decoded:
            return []
        if self.batch_handler is None:
            return [self._attempts(self.handler, raw, record) for raw, record in decoded]
        try:
            results = list(self.batch_handler([record for _, record in decoded]))
            if len(results) != len(decoded):
                raise ValueError(f"batch handler returned {len(results)} results for {len(decoded)} records")
            return [self._checked(record, outs) for (_, record), outs in zip(decoded, results)]
        except Exception as err:  # find the poisonous record(s): one record at a time
            log.warning("batch of %d failed (%r); retrying record by record", len(decoded), err)
            one = lambda record: self.batch_handler([record])[0]  # noqa: E731
            return [self._attempts(one, raw, record) for raw, record in decoded]

    def _attempts(self, call: Handler, raw, record: Record) -> list[Output]:
        """``call(record)`` up to ``max_attempts`` times with exponential backoff, then a dead letter."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._checked(record, call(record))
            except RejectRecord as err:
                return [self._dead_letter(raw, "rejected", str(err), attempt)]
            except Exception as err:
                if attempt >= self.cfg.max_attempts:
                    log.error("record %s/%d/%d failed %d times: %r", raw.topic, raw.partition, raw.offset,
                              attempt, err)
                    return [self._dead_letter(raw, "handler", f"{type(err).__name__}: {err}", attempt)]
                self.stats.retries += 1
                time.sleep(self.cfg.retry_backoff_s * 2 ** (attempt - 1))

    def _checked(self, record: Record, outputs: Iterable[Output]) -> list[Output]:
        """Validate a handler's outputs (a wrong type is the handler's failure, not the bus's)
        and carry the input's trace id to them."""
        checked = []
        for out in outputs:
            self.producer.check(out.topic, out.msg)
            headers = dict(out.headers or {})
            if record.trace_id and HEADER_TRACE not in headers and not own_trace(out.msg):
                headers[HEADER_TRACE] = record.trace_id
            checked.append(Output(out.topic, out.msg, out.key, headers))
        return checked

    def _dead_letter(self, raw, kind: str, error: str, attempts: int) -> Output:
        value = raw.value or b""
        if len(value) > self.cfg.max_record_bytes // 2:  # the dead letter itself must fit
            error = f"{error} [value truncated from {len(value)} bytes]"
            value = value[: self.cfg.max_record_bytes // 2]
        dead = pb.DeadLetter(source_topic=raw.topic, partition=raw.partition, offset=raw.offset,
                             key=raw.key or b"", value=value, headers=decode_headers(raw.headers),
                             error_type=kind, error=error[:4096], attempts=attempts, service=self.service)
        dead.failed_at.GetCurrentTime()
        if dead.ByteSize() > self.cfg.max_record_bytes:
            dead.ClearField("value")
            dead.ClearField("headers")
        # One line per record a handler failed on; refusals before any handler are summed per
        # batch instead (a flood of them must not flood the log).
        log.log(logging.WARNING if attempts else logging.DEBUG, "dead letter %s/%d/%d: %s: %s",
                raw.topic, raw.partition, raw.offset, kind, error[:200])
        return Output(self.topics.deadletter, dead, key=raw.key)

    def _publish(self, outputs: list[Output], raws: list) -> bool:
        """Produce ``outputs`` and commit the batch's offsets; False (and rewound) if it failed."""
        offsets = {TopicPartition(raw.topic, raw.partition): OffsetAndMetadata(raw.offset + 1, "", -1) for raw in raws}
        try:
            if self.producer.transactional:
                self.producer.begin_transaction()
                for out in outputs:
                    self.producer.send(out.topic, out.msg, out.key, out.headers)
                if outputs and armed("worker.before_commit"):
                    self.producer.flush()  # in the log, not yet committed: where a crash test aims
                    failpoint("worker.before_commit")
                self.producer.commit_transaction(offsets, self._consumer.group_metadata())
            else:
                self._produce_then_commit(outputs, offsets)
        except Exception as err:
            self.stats.publish_failures += 1
            log.warning("publishing a batch of %d failed (%r); it will be processed again", len(raws), err)
            self._recover_producer(err)
            self._rewind(raws)
            time.sleep(self.cfg.retry_backoff_s)
            return False
        self._fenced_in_a_row = 0
        return True

    def _produce_then_commit(self, outputs: list[Output], offsets) -> None:
        for out in outputs:
            self.producer.send(out.topic, out.msg, out.key, out.headers)
        self.producer.flush()  # raises unless every output is durably written
        if outputs:
            failpoint("worker.before_commit")
        try:
            self._consumer.commit(offsets)
        except KafkaError as err:
            # The outputs are durable; after a rebalance the new owner may redo the batch,
            # and its duplicates are recognised by id downstream.
            log.warning("offset commit failed after the outputs were written: %r", err)

    def _recover_producer(self, err: Exception) -> None:
        """Abort the failed transaction, or replace a producer that can no longer abort."""
        if not self.producer.transactional:
            return
        if isinstance(err, ProducerFencedError):
            # The coordinator aborted our transaction (it outlived transaction_timeout_ms, e.g.
            # across a broker restart), or another live worker uses our transactional id.
            self._fenced_in_a_row += 1
            if self._fenced_in_a_row > MAX_FENCED_IN_A_ROW:
                raise RuntimeError(f"fenced {self._fenced_in_a_row} times in a row: another live worker "
                                   f"uses transactional id {self.producer.transactional_id}") from err
        else:
            try:
                self.producer.abort_transaction()
                return
            except Exception as abort_err:
                log.warning("abort failed (%r); replacing the transactional producer", abort_err)
        if not self._owns_producer:
            raise err
        try:
            self.producer.close(timeout_s=1)
        except Exception:
            pass  # it is being replaced; its state no longer matters
        while True:
            try:
                self.producer = self._new_producer()
                return
            except KafkaError as init_err:  # e.g. the broker is still down
                if self._stop.is_set():
                    raise
                log.warning("cannot start a transactional producer yet (%r); retrying", init_err)
                time.sleep(self.cfg.retry_backoff_s)

    def _rewind(self, raws: list) -> None:
        """Seek each partition back to its first record in ``raws``: the next poll fetches them again."""
        first: dict[TopicPartition, int] = {}
        for raw in raws:
            first.setdefault(TopicPartition(raw.topic, raw.partition), raw.offset)
        assigned = self._consumer.assignment()
        for tp, offset in first.items():
            if tp in assigned:
                self._consumer.seek(tp, offset)

