"""Poison records end in the dead-letter topic with their reason; the worker carries on."""

from __future__ import annotations

import random

import pytest
from kafka import KafkaProducer

from srlm.bus import Output, RecordProducer, RejectRecord, Worker, read_to_end
from srlm.v1 import records_pb2 as pb
from tests.bus.samples import prompt
from tests.bus.workers import candidates_for, running, wait_until
from tests.fixtures.kafka import wait_for_records

pytestmark = pytest.mark.kafka

KEY = b"one-partition"  # every record on one partition: the order below is the order consumed


def _inject(cfg, topics, oversized_bytes: int):
    """good-0, undecodable, good-1, wrong type, good-2, oversized, good-3, poison, good-4, rejected, good-5,
    no schema header (a valid Prompt: bytes parse, but no srlm producer wrote them), good-6.

    Returns {reason: offset} of the bad records."""
    raw = KafkaProducer(**cfg.client_kwargs(), acks="all")
    name = topics.prompts.name
    bad: dict[str, int] = {}

    def send(value: bytes, headers=None, reason=None):
        meta = raw.send(name, value=value, key=KEY, headers=headers or []).get(timeout=30)
        if reason:
            bad[reason] = meta.offset

    schema = [("srlm-schema", b"srlm.v1.Prompt")]
    good = lambda i: send(prompt(i).SerializeToString(), schema)  # noqa: E731
    good(0)
    send(b"\xff\xff\xff\xff", schema, reason="decode")
    good(1)
    send(pb.CandidateSet(prompt_id="p").SerializeToString(), [("srlm-schema", b"srlm.v1.CandidateSet")], "schema")
    good(2)
    send(prompt(99, text="y" * oversized_bytes).SerializeToString(), schema, reason="oversized")
    good(3)
    send(prompt(100, text="poison").SerializeToString(), schema, reason="handler")
    good(4)
    send(prompt(101, text="reject me").SerializeToString(), schema, reason="rejected")
    good(5)
    send(prompt(102).SerializeToString(), reason="no_schema")
    good(6)
    raw.flush()
    raw.close()
    return bad


def _handler(topics):
    inner = candidates_for(topics)

    def handle(record):
        if record.value.text == "poison":
            raise RuntimeError("this handler always fails on poison")
        if record.value.text == "reject me":
            raise RejectRecord("not a valid prompt")
        return inner(record)
    return handle


@pytest.mark.parametrize("mode", ["per-record", "batch"])
def test_bad_records_are_dead_lettered_and_processing_continues(kafka_config, kafka_topics, mode):
    cfg = kafka_config.model_copy(update={"max_record_bytes": 4096, "max_attempts": 3})
    bad = _inject(kafka_config, kafka_topics, oversized_bytes=10_000)
    handler = _handler(kafka_topics)
    kwargs = {"handler": handler} if mode == "per-record" else {
        "batch_handler": lambda records: [handler(r) for r in records]}
    worker = Worker(cfg, "dl-group", kafka_topics.prompts, service="sampler", instance_id=f"dl-{mode}",
                    topics=kafka_topics, **kwargs)
    with running(worker):
        outputs = wait_for_records(kafka_config, kafka_topics.candidates, 7)
        dead = wait_for_records(kafka_config, kafka_topics.deadletter, 6)
        wait_until(lambda: worker.stats.records == 13, 30, "the batch to be committed")

    assert sorted(r.value.prompt_id for r in outputs) == [f"prompt-{i}" for i in range(7)]
    by_reason = {d.value.error_type: d.value for d in dead}
    assert set(by_reason) == set(bad) == {"decode", "schema", "oversized", "handler", "rejected", "no_schema"}
    for reason, letter in by_reason.items():
        assert letter.source_topic == kafka_topics.prompts.name
        assert letter.offset == bad[reason], reason
        assert letter.partition == outputs[0].partition
        assert letter.key == KEY
        assert letter.service == "sampler"
        assert letter.failed_at.seconds > 0
    assert by_reason["decode"].value == b"\xff\xff\xff\xff"
    assert "cannot parse" in by_reason["decode"].error
    assert "srlm.v1.CandidateSet" in by_reason["schema"].error
    assert by_reason["schema"].headers["srlm-schema"] == "srlm.v1.CandidateSet"
    assert "max_record_bytes=4096" in by_reason["oversized"].error
    assert len(by_reason["oversized"].value) <= 4096 // 2  # the dead letter itself stays small
    assert by_reason["handler"].error == "RuntimeError: this handler always fails on poison"
    assert by_reason["handler"].attempts == 3
    assert by_reason["rejected"].attempts == 1 and by_reason["rejected"].error == "not a valid prompt"
    assert "no srlm-schema header" in by_reason["no_schema"].error and by_reason["no_schema"].attempts == 0
    # Dead letters are not processed records' outputs: each good record made one output.
    assert worker.stats.dead_letters == 6


def test_handler_output_of_the_wrong_type_is_a_handler_failure(kafka_config, kafka_topics):
    with RecordProducer(kafka_config, kafka_topics) as producer:
        producer.send(kafka_topics.prompts, prompt(1))
        producer.flush()
    wrong = lambda record: [Output(kafka_topics.candidates, record.value)]  # noqa: E731 - a Prompt, not a CandidateSet
    worker = Worker(kafka_config, "wrong-type", kafka_topics.prompts, wrong, instance_id="wrong", topics=kafka_topics)
    with running(worker):
        [dead] = wait_for_records(kafka_config, kafka_topics.deadletter, 1)
    assert dead.value.error_type == "handler"
    assert "carries srlm.v1.CandidateSet, got srlm.v1.Prompt" in dead.value.error
    assert read_to_end(kafka_config, kafka_topics.candidates) == []


def test_a_poison_flood_is_dead_lettered_in_large_transactions_and_good_records_still_flow(kafka_config, kafka_topics):
    """10,000 random header-less records (some parse as a protobuf message) among 20 good ones:
    every bad one is dead-lettered without reaching the handler, every good one is handled once,
    and the flood rides in few transactions (the time it takes: bench/bus.py --poison)."""
    rng = random.Random(7)
    raw = KafkaProducer(**kafka_config.client_kwargs(), acks="all", linger_ms=20)
    for i in range(10_020):
        if i % 501 == 0:
            raw.send(kafka_topics.prompts.name, prompt(i // 501).SerializeToString(), key=KEY,
                     headers=[("srlm-schema", b"srlm.v1.Prompt")])
        else:
            raw.send(kafka_topics.prompts.name, rng.randbytes(rng.randint(1, 300)), key=KEY)
    raw.flush()
    raw.close()
    handled = []

    def handle(records):
        handled.extend(r.value.meta.id for r in records)
        return [candidates_for(kafka_topics)(r) for r in records]

    worker = Worker(kafka_config, "flood", kafka_topics.prompts, batch_handler=handle, instance_id="flood",
                    topics=kafka_topics)
    with running(worker):
        wait_until(lambda: worker.stats.records == 10_020, 120, "the flood to be cleared")
    assert sorted(handled) == sorted(f"prompt-{i}" for i in range(20))
    assert worker.stats.dead_letters == 10_000
    assert len(read_to_end(kafka_config, kafka_topics.deadletter)) == 10_000
    assert {r.value.error_type for r in read_to_end(kafka_config, kafka_topics.deadletter)} == {"no_schema"}
    assert len(read_to_end(kafka_config, kafka_topics.candidates)) == 20
    # at most one handled batch per poll: ~20 polls with a good record, a few without
    assert worker.stats.batches <= 40, worker.stats.batches
