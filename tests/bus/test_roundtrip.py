"""Every record type through its topic on the real broker: value, key and headers intact."""

from __future__ import annotations

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from srlm.bus import RecordProducer, RecordTooLargeError, TopicRegistry, ensure_topics, read_to_end
from srlm.bus.envelope import HEADER_SCHEMA, HEADER_TRACE
from srlm.v1 import records_pb2 as pb
from tests.bus.samples import samples

pytestmark = pytest.mark.kafka


def test_every_message_type_round_trips_with_headers(kafka_config, kafka_topics):
    sent = samples()
    assert set(sent) == {t.name.rsplit(".", 1)[1] for t in kafka_topics}, "a topic without a sample"
    with RecordProducer(kafka_config, kafka_topics) as producer:
        for what, msg in sent.items():
            producer.send(getattr(kafka_topics, what).name, msg, key=f"key-{what}", headers={"x-origin": "test"})
        assert producer.flush() == len(sent)

    for what, msg in sent.items():
        topic = getattr(kafka_topics, what)
        [record] = read_to_end(kafka_config, topic)
        assert record.value == msg, what
        assert type(record.value) is topic.message
        assert record.key == f"key-{what}"
        # the schema and the caller's own headers; id, run, iteration and trace are in the value
        assert record.headers == {HEADER_SCHEMA: msg.DESCRIPTOR.full_name, "x-origin": "test"}, what
        if what in ("commands", "prompts", "candidates", "judgments", "pairs"):
            assert record.id == msg.meta.id and record.trace_id == "trace-1"
    # Messages without meta have their natural id.
    assert read_to_end(kafka_config, kafka_topics.models)[0].id == "run-1/m2"
    assert read_to_end(kafka_config, kafka_topics.runs)[0].id == "run-1"
    assert read_to_end(kafka_config, kafka_topics.deadletter)[0].id == "srlm.prompts/1/42"


def test_key_defaults_to_record_id(kafka_config, kafka_topics):
    with RecordProducer(kafka_config, kafka_topics) as producer:
        producer.send(kafka_topics.pairs, samples()["pairs"])
        producer.flush()
    [record] = read_to_end(kafka_config, kafka_topics.pairs)
    assert record.key == "pair-1"


def test_producer_refuses_wrong_type_and_oversized_values(kafka_config, kafka_topics):
    with RecordProducer(kafka_config, kafka_topics) as producer:
        with pytest.raises(TypeError, match="carries srlm.v1.CandidateSet, got srlm.v1.Prompt"):
            producer.send(kafka_topics.candidates.name, samples()["prompts"])
        with pytest.raises(KeyError, match="not an srlm topic"):
            producer.send("elsewhere.prompts", samples()["prompts"])
        huge = pb.Prompt(text="x" * (kafka_config.max_record_bytes + 1))
        with pytest.raises(RecordTooLargeError, match="max_record_bytes"):
            producer.send(kafka_topics.prompts, huge)
        assert producer.flush() == 0
    assert read_to_end(kafka_config, kafka_topics.candidates) == []


def test_topics_are_created_once_with_their_configuration(kafka_config):
    topics = TopicRegistry.from_config(kafka_config)
    assert [t.name for t in topics][:2] == [f"{kafka_config.topic_prefix}.commands", f"{kafka_config.topic_prefix}.prompts"]
    assert sorted(ensure_topics(kafka_config, topics)) == sorted(t.name for t in topics)
    assert ensure_topics(kafka_config, topics) == []  # idempotent

    admin = KafkaAdminClient(**kafka_config.client_kwargs())
    try:
        partitions = {t["name"]: len(t["partitions"]) for t in admin.describe_topics([t.name for t in topics])}
        assert partitions[topics.prompts.name] == kafka_config.partitions
        assert partitions[topics.runs.name] == 1
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t.name) for t in
                                          (topics.models, topics.runs, topics.pairs)])
    finally:
        admin.close()
    flat = {name: {k: v["value"] if isinstance(v, dict) else v for k, v in conf.items()}
            for name, conf in _topic_configs(configs).items()}
    assert flat[topics.models.name]["cleanup.policy"] == "compact"
    assert flat[topics.runs.name]["cleanup.policy"] == "compact"
    assert flat[topics.pairs.name]["cleanup.policy"] == "delete"
    assert flat[topics.pairs.name]["retention.ms"] == str(kafka_config.retention_ms)


def _topic_configs(described) -> dict:
    """describe_configs' answer -> {topic: {key: value}} (kafka-python 3 nests it by resource type)."""
    if isinstance(described, dict):
        for value in described.values():
            if isinstance(value, dict):
                return value
    raise AssertionError(f"unexpected describe_configs answer: {described!r}")
