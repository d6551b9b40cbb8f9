"""Workers of one consumer group share the partitions; a member joining rebalances them
without losing or repeating a record."""

from __future__ import annotations

import pytest

from srlm.bus import RecordProducer, Worker, unique_by_id
from tests.bus.samples import prompt
from tests.bus.workers import candidates_for, running, wait_until
from tests.fixtures.kafka import wait_for_records

pytestmark = pytest.mark.kafka

GROUP = "sampler"


def _produce(cfg, topics, ids):
    with RecordProducer(cfg, topics) as producer:
        for i in ids:
            producer.send(topics.prompts, prompt(i), key=f"prompt-{i}")
        producer.flush()


def test_two_workers_share_partitions_and_a_third_rebalances_without_loss(kafka_config, kafka_topics):
    assert kafka_topics.prompts.partitions == 4
    handler = candidates_for(kafka_topics, delay_s=0.01)  # batches in flight while members join
    make = lambda name: Worker(kafka_config, GROUP, kafka_topics.prompts, handler,  # noqa: E731
                               instance_id=name, topics=kafka_topics)
    first, second = make("w1"), make("w2")
    with running(first, second):
        wait_until(lambda: len(first.assigned) + len(second.assigned) == 4 and first.assigned and second.assigned,
                   30, "two members to share the 4 partitions")
        assert not first.assigned & second.assigned
        _produce(kafka_config, kafka_topics, range(0, 150))
        wait_until(lambda: first.stats.records > 0 and second.stats.records > 0, 30, "both workers to process")

        third = make("w3")
        with running(third):
            _produce(kafka_config, kafka_topics, range(150, 300))
            wait_until(lambda: third.assigned and len(first.assigned | second.assigned | third.assigned) == 4,
                       30, "the third member to get partitions")
            outputs = wait_for_records(kafka_config, kafka_topics.candidates, 300, unique=True)
            assert third.stats.records > 0
            owners = [first.assigned, second.assigned, third.assigned]
            assert sum(len(o) for o in owners) == 4, owners

    ids = [r.id for r in outputs]
    assert set(ids) == {f"cands-prompt-{i}" for i in range(300)}
    # Transactions (kafka.exactly_once): a batch whose partition moved mid-flight is aborted,
    # so the committed output has no duplicates at all.
    assert len(ids) == len(unique_by_id(outputs)) == 300
    assert sum(w.stats.records for w in (first, second, third)) >= 300
