"""What travels around a protobuf value on Kafka: headers, the record's id, decoding.

Headers (all UTF-8 strings):
    srlm-schema     full protobuf name of the value, e.g. ``srlm.v1.Prompt``
    srlm-id         the record's deterministic id (``meta.id``), used to recognise replays
    srlm-run        run id
    srlm-iteration  iteration number
    srlm-trace      trace id, carried from a worker's input to its outputs
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Mapping

from google.protobuf.message import DecodeError, Message

from srlm.bus.topics import Topic

HEADER_SCHEMA = "srlm-schema"
HEADER_ID = "srlm-id"
HEADER_RUN = "srlm-run"
HEADER_ITERATION = "srlm-iteration"
HEADER_TRACE = "srlm-trace"


def _field(msg: Message, name: str):
    return getattr(msg, name) if name in msg.DESCRIPTOR.fields_by_name else None


@lru_cache(maxsize=None)
def _has_meta(descriptor) -> bool:
    return "meta" in descriptor.fields_by_name


def record_id(msg: Message) -> str:
    """The deterministic id of a record: ``meta.id``, or the natural id of messages without meta."""
    if _has_meta(msg.DESCRIPTOR):
        return msg.meta.id
    kind = msg.DESCRIPTOR.name
    if kind == "ModelVersion":
        return msg.version_id
    if kind == "RunState":
        return msg.run_id
    if kind == "DeadLetter":  # one dead letter per failed source record
        return f"{msg.source_topic}/{msg.partition}/{msg.offset}"
    return ""  # RunEvent: a stream of events, no identity


def envelope_headers(msg: Message, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The srlm headers of ``msg``; ``extra`` adds or overrides headers."""
    descriptor = msg.DESCRIPTOR
    headers = {HEADER_SCHEMA: descriptor.full_name}
    # Every data-plane record has meta: read it directly, it is on the producer's hot path.
    if _has_meta(descriptor):
        meta = msg.meta
        values = (meta.id, meta.run_id, meta.iteration, meta.trace_id)
    else:
        values = (record_id(msg), _field(msg, "run_id"), _field(msg, "iteration"), _field(msg, "trace_id"))
    for name, value in zip((HEADER_ID, HEADER_RUN, HEADER_ITERATION, HEADER_TRACE), values):
        if value is not None and value != "":
            headers[name] = str(value)
    if extra:
        headers.update(extra)
    return headers


class DecodeFailure(Exception):
    """A consumed record cannot become its topic's message; ``kind`` is the dead-letter reason."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # "oversized", "no_schema", "schema" or "decode"


@dataclass(frozen=True)
class Record:
    """A consumed, decoded record."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: Message
    headers: dict[str, str] = field(default_factory=dict)
    timestamp_ms: int = 0

    @property
    def id(self) -> str:
        return self.headers.get(HEADER_ID) or record_id(self.value)

    @property
    def trace_id(self) -> str | None:
        return self.headers.get(HEADER_TRACE)


def decode_headers(raw_headers) -> dict[str, str]:
    """kafka-python's ``[(str, bytes)]`` -> ``{str: str}`` (undecodable bytes are replaced)."""
    return {k: (v or b"").decode("utf-8", errors="replace") for k, v in (raw_headers or [])}


def decode_record(raw, topic: Topic, max_bytes: int) -> Record:
    """A kafka-python ``ConsumerRecord`` -> ``Record``; raises ``DecodeFailure`` with the reason."""
    value: bytes = raw.value if raw.value is not None else b""
    if len(value) > max_bytes:
        raise DecodeFailure("oversized", f"value is {len(value)} bytes, more than max_record_bytes={max_bytes}")
    headers = decode_headers(raw.headers)
    schema = headers.get(HEADER_SCHEMA)
    if schema is None:  # random bytes can parse as a protobuf message: never guess
        raise DecodeFailure("no_schema", f"no {HEADER_SCHEMA} header: not an srlm record")
    if schema != topic.schema:
        raise DecodeFailure("schema", f"{topic.name} carries {topic.schema}, the record says {schema}")
    msg = topic.message()
    try:
        msg.ParseFromString(value)
    except (DecodeError, ValueError) as err:
        raise DecodeFailure("decode", f"cannot parse {len(value)} bytes as {topic.schema}: {err}") from None
    key = raw.key.decode("utf-8", errors="replace") if raw.key is not None else None
    return Record(topic=raw.topic, partition=raw.partition, offset=raw.offset, key=key, value=msg,
                  headers=headers, timestamp_ms=raw.timestamp or 0)
