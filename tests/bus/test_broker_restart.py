"""The broker stopped and restarted while records are produced and consumed: producers and
consumers recover on their own and nothing is lost.

The restart is placed inside a worker's transaction (its outputs sent, offsets and commit
pending) and lasts longer than the transaction timeout, so the broker may abort that
transaction or the group may drop the member: the hardest moment for read-process-write.
"""

from __future__ import annotations

import threading
import time

import pytest

from srlm.bus import RecordProducer, Worker, read_to_end
from tests.bus.samples import prompt
from tests.bus.workers import candidates_for, running, wait_until
from tests.fixtures.kafka import wait_for_records

pytestmark = pytest.mark.kafka

INPUTS = 300
TXN_TIMEOUT_MS = 5000  # shorter than a restart: the coordinator aborts the open transaction


def test_producer_and_worker_survive_a_broker_restart(kafka_broker, kafka_config, kafka_topics):
    sent: list[int] = []
    errors: list[BaseException] = []

    def produce():
        try:
            with RecordProducer(kafka_config, kafka_topics) as producer:
                for i in range(INPUTS):
                    producer.send(kafka_topics.prompts, prompt(i), key=f"prompt-{i}")
                    sent.append(i)
                    time.sleep(0.02)  # ~6 s of traffic, most of it while the broker is down
                producer.flush(timeout_s=120)
        except BaseException as err:  # surfaced by the assertion below
            errors.append(err)

    worker = Worker(kafka_config.model_copy(update={"transaction_timeout_ms": TXN_TIMEOUT_MS}), "restart-group",
                    kafka_topics.prompts, candidates_for(kafka_topics), instance_id="restart-1", topics=kafka_topics)
    restarted = threading.Event()
    commit = worker.producer.commit_transaction

    def commit_after_an_outage(offsets=None, group_metadata=None):
        if worker.stats.batches == 2 and not restarted.is_set():
            kafka_broker.restart()  # same ports, same data
            restarted.set()
        return commit(offsets, group_metadata)

    worker.producer.commit_transaction = commit_after_an_outage
    producer_thread = threading.Thread(target=produce, daemon=True)
    with running(worker):
        producer_thread.start()
        wait_until(restarted.is_set, 120, "the broker restart inside the worker's third transaction")
        producer_thread.join(180)
        assert not producer_thread.is_alive() and not errors, errors
        outputs = wait_for_records(kafka_config, kafka_topics.candidates, INPUTS, timeout_s=120, unique=True)
    assert len(sent) == INPUTS
    assert len(read_to_end(kafka_config, kafka_topics.prompts)) == INPUTS  # nothing the producer sent was lost
    ids = [r.id for r in outputs]
    assert set(ids) == {f"cands-prompt-{i}" for i in range(INPUTS)}
    assert len(ids) == INPUTS  # an aborted transaction's outputs are invisible: no duplicates
    print(f"batches redone after the restart: {worker.stats.publish_failures}")
