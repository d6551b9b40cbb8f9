"""The broker stopped and restarted while records are produced and consumed: producers and
consumers recover on their own and nothing is lost."""

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


def test_producer_and_worker_survive_a_broker_restart(kafka_broker, kafka_config, kafka_topics):
    sent = []
    errors: list[BaseException] = []

    def produce():
        try:
            with RecordProducer(kafka_config, kafka_topics) as producer:
                for i in range(INPUTS):
                    producer.send(kafka_topics.prompts, prompt(i), key=f"prompt-{i}")
                    sent.append(i)
                    time.sleep(0.02)  # ~6 s of traffic around the restart
                producer.flush(timeout_s=120)
        except BaseException as err:  # surfaced by the assertion below
            errors.append(err)

    worker = Worker(kafka_config, "restart-group", kafka_topics.prompts, candidates_for(kafka_topics),
                    instance_id="restart-1", topics=kafka_topics)
    producer_thread = threading.Thread(target=produce, daemon=True)
    with running(worker):
        producer_thread.start()
        wait_until(lambda: worker.stats.records >= 30, 60, "the worker to process before the restart")
        before = worker.stats.records
        kafka_broker.restart()  # same ports, same data
        producer_thread.join(180)
        assert not producer_thread.is_alive() and not errors, errors
        outputs = wait_for_records(kafka_config, kafka_topics.candidates, INPUTS, timeout_s=120, unique=True)
    assert before < INPUTS, "the restart came too late to interrupt anything"
    assert len(sent) == INPUTS
    assert [r.value.meta.id for r in read_to_end(kafka_config, kafka_topics.prompts)].__len__() == INPUTS
    ids = [r.id for r in outputs]
    assert set(ids) == {f"cands-prompt-{i}" for i in range(INPUTS)}
    assert len(ids) == INPUTS  # transactions: no duplicates even across the restart
