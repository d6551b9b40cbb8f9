"""Read a topic from the beginning to its current end, outside any consumer group.

For state held in compacted topics (the controller rebuilding runs and model versions) and
for checking what a stage produced. Reads committed records only, unless asked for every
record written (aborted transactions' included: what the crash tests count).
"""

from __future__ import annotations

import time

from kafka import KafkaConsumer
from kafka.errors import AuthorizationError
from kafka.structs import TopicPartition

from srlm.bus.envelope import Record, decode_record
from srlm.bus.security import authorization_hint, check_connection
from srlm.bus.topics import Topic
from srlm.config import KafkaConfig


def read_to_end(cfg: KafkaConfig, topic: Topic, timeout_s: float = 30.0, committed_only: bool = True) -> list[Record]:
    """Every committed (or, with ``committed_only=False``, every written) record of ``topic``
    up to its end offsets at the time of the call.

    Raises ``TimeoutError`` if the end is not reached in ``timeout_s`` and ``DecodeFailure``
    for a record that is not the topic's message type.
    """
    check_connection(cfg)
    consumer = KafkaConsumer(**cfg.client_kwargs(), group_id=None, enable_auto_commit=False,
                             isolation_level="read_committed" if committed_only else "read_uncommitted",
                             auto_offset_reset="earliest")
    try:
        partitions = consumer.partitions_for_topic(topic.name)
        if not partitions:
            raise KeyError(f"topic {topic.name} does not exist")
        tps = [TopicPartition(topic.name, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)  # read_committed: the last stable offsets
        records: list[Record] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic.name}: end offsets {end} not reached in {timeout_s}s")
            try:
                polled = consumer.poll(timeout_ms=200)
            except AuthorizationError as err:
                raise type(err)(authorization_hint(err, cfg, topic.name)) from err
            for raws in polled.values():
                for raw in raws:
                    if raw.offset < end[TopicPartition(raw.topic, raw.partition)]:
                        records.append(decode_record(raw, topic, cfg.max_record_bytes))
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close(autocommit=False)
