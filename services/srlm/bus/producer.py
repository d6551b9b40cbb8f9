"""A typed Kafka producer: protobuf values checked against their topic, srlm headers, acks=all.

kafka-python 3 supports the idempotent producer (no duplicates from its own retries) and
transactions (KIP-98, with KIP-447 group metadata); both are used here. ``flush()`` returns
only once every record sent before it is acknowledged by all in-sync replicas, and raises
if any was not.
"""

from __future__ import annotations

import logging
from typing import Mapping

from google.protobuf.message import Message
from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.producer.future import FutureRecordMetadata

from srlm.bus.envelope import envelope_headers, record_id
from srlm.bus.security import authorization_hint, check_connection
from srlm.bus.topics import RECORD_OVERHEAD_BYTES, Topic, TopicRegistry
from srlm.config import KafkaConfig

log = logging.getLogger(__name__)


class ProduceError(RuntimeError):
    """Records were not durably written; the message says which and why."""


class RecordTooLargeError(ValueError):
    """A value is larger than ``kafka.max_record_bytes``."""


class RecordProducer:
    """Sends protobuf records to srlm topics. With ``transactional_id`` it is transactional."""

    def __init__(self, cfg: KafkaConfig, topics: TopicRegistry | None = None,
                 transactional_id: str | None = None) -> None:
        self.cfg = cfg
        self.topics = topics or TopicRegistry.from_config(cfg)
        self.transactional_id = transactional_id
        options = dict(
            acks="all",
            enable_idempotence=True,  # explicit: a conflicting setting raises instead of silently disabling it
            linger_ms=cfg.linger_ms,
            batch_size=cfg.batch_bytes,
            max_request_size=cfg.max_record_bytes + RECORD_OVERHEAD_BYTES,
        )
        if transactional_id:
            options.update(transactional_id=transactional_id, transaction_timeout_ms=cfg.transaction_timeout_ms)
        # A refused login would otherwise block here for the whole bootstrap timeout and then
        # say only "Unable to bootstrap"; the check names the wrong kafka.* setting instead.
        check_connection(cfg)
        self._producer = KafkaProducer(**cfg.client_kwargs(), **options)
        if transactional_id:
            # Fences an older instance with the same id and aborts its open transaction.
            try:
                self._producer.init_transactions()
            except KafkaError as err:
                hint = authorization_hint(err, cfg, transactional_id)
                if hint is None:
                    raise
                self._producer.close(timeout=1)
                raise type(err)(hint) from err
        self._pending: list[tuple[str, FutureRecordMetadata]] = []

    @property
    def transactional(self) -> bool:
        return self.transactional_id is not None

    def check(self, topic: str | Topic, msg: Message, size: int | None = None) -> Topic:
        """The topic ``msg`` may be sent to; raises TypeError / RecordTooLargeError / KeyError if not."""
        spec = topic if isinstance(topic, Topic) else self.topics.by_name(topic)
        if not isinstance(msg, spec.message):
            raise TypeError(f"{spec.name} carries {spec.schema}, got {type(msg).DESCRIPTOR.full_name}")
        size = msg.ByteSize() if size is None else size
        if size > self.cfg.max_record_bytes:
            raise RecordTooLargeError(f"{spec.schema} of {size} bytes for {spec.name} is more than "
                                      f"kafka.max_record_bytes={self.cfg.max_record_bytes}")
        return spec

    def send(self, topic: str | Topic, msg: Message, key: str | bytes | None = None,
             headers: Mapping[str, str] | None = None) -> FutureRecordMetadata:
        """Queue ``msg`` for ``topic``. ``key`` defaults to the record's id (``meta.id``)."""
        value = msg.SerializeToString()
        spec = self.check(topic, msg, len(value))
        if key is None:
            key = record_id(msg) or None
        key_bytes = key.encode() if isinstance(key, str) else key
        raw_headers = [(k, v.encode()) for k, v in envelope_headers(msg, headers).items()]
        future = self._producer.send(spec.name, value=value, key=key_bytes, headers=raw_headers)
        self._pending.append((spec.name, future))
        return future

    def flush(self, timeout_s: float | None = None) -> int:
        """Wait until everything sent so far is acknowledged (acks=all); returns how many.

        Raises ``ProduceError`` if any record failed: the caller must not commit its input.
        """
        pending, self._pending = self._pending, []
        self._producer.flush(timeout=timeout_s)
        failed = [(name, f.exception) for name, f in pending if not f.is_done or f.failed()]
        if failed:
            name, err = failed[0]
            hint = authorization_hint(err, self.cfg, name)
            raise ProduceError(f"{len(failed)} of {len(pending)} records were not written (first: {name}: "
                               f"{hint or repr(err)})")
        return len(pending)

    # -- transactions (read-process-write) -------------------------------------------------

    def begin_transaction(self) -> None:
        self._pending = []
        self._producer.begin_transaction()

    def commit_transaction(self, offsets=None, group_metadata=None) -> None:
        """Commit the records sent since ``begin_transaction`` and, atomically, the consumer
        ``offsets`` ({TopicPartition: OffsetAndMetadata}) of the group in ``group_metadata``."""
        if offsets:
            self._producer.send_offsets_to_transaction(offsets, group_metadata)
        self._producer.commit_transaction()
        pending, self._pending = self._pending, []
        # kafka-python 3.0.12 can report a commit as done after the coordinator aborted the
        # transaction (its timeout passed during a broker outage): the records' own futures
        # carry the failure. The caller must treat the batch as not written.
        failed = [(name, f.exception) for name, f in pending if not f.is_done or f.failed()]
        if failed:
            name, err = failed[0]
            raise ProduceError(f"transaction committed without {len(failed)} of its {len(pending)} records "
                               f"(first: {name}: {err!r})")

    def abort_transaction(self) -> None:
        self._pending = []
        self._producer.abort_transaction()

    def close(self, timeout_s: float | None = 10) -> None:
        self._producer.close(timeout=timeout_s)

    def __enter__(self) -> "RecordProducer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
