"""What travels around a protobuf value on Kafka: headers, the record's id, decoding.

Headers (UTF-8 strings):
    srlm-schema     full protobuf name of the value, e.g. ``srlm.v1.Prompt``: a consumer decodes
                    nothing whose schema is not its topic's
    srlm-trace      trace id, only on a record whose value cannot carry it (no ``meta.trace_id``):
                    a worker carries its input's trace to such outputs

Everything else about a record is in its value: the id that recognises replays (``meta.id``,
or the natural id of a message without meta), run, iteration and trace. They are not repeated
as headers because kafka-python's pure-Python record codec spends ~2.5 µs a header writing a
record and more reading it, a fifth of the producer's cost at the bus's rates (bench/bus.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Mapping

from google.protobuf.message import DecodeError, Message

from srlm.bus.topics import Topic

HEADER_SCHEMA = "srlm-schema"
HEADER_TRACE = "srlm-trace"


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


def own_trace(msg: Message) -> str:
    """The trace id ``msg`` carries itself ("" if none)."""
    return msg.meta.trace_id if _has_meta(msg.DESCRIPTOR) else ""


def envelope_headers(msg: Message, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The srlm headers of ``msg``; ``extra`` adds or overrides headers."""
    headers = {HEADER_SCHEMA: msg.DESCRIPTOR.full_name}
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
        return record_id(self.value)

    @property
    def trace_id(self) -> str | None:
        return self.headers.get(HEADER_TRACE) or own_trace(self.value) or None


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
