"""The Kafka data plane: topic registry, typed producer, consumer worker, dead letters.

See ``worker.py`` for the delivery guarantee and ``local_broker.py`` for the real broker
used locally and in tests.
"""

from srlm.bus import kafka_fixes

kafka_fixes.apply()

from srlm.bus.dedupe import SeenIds, unique_by_id
from srlm.bus.envelope import DecodeFailure, Record, envelope_headers, record_id
from srlm.bus.producer import ProduceError, RecordProducer, RecordTooLargeError
from srlm.bus.reader import read_to_end
from srlm.bus.topics import Topic, TopicRegistry, ensure_topics
from srlm.bus.worker import Output, RejectRecord, Worker

__all__ = [
    "DecodeFailure", "Output", "ProduceError", "Record", "RecordProducer", "RecordTooLargeError", "RejectRecord",
    "SeenIds", "Topic", "TopicRegistry", "Worker", "ensure_topics", "envelope_headers", "read_to_end",
    "record_id", "unique_by_id",
]
