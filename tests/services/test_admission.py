"""A stage works only on records of a live run, in that run's iteration, within the limits:
everything else ends in the dead-letter topic with its reason and never reaches the engine."""

from __future__ import annotations

import pytest
from kafka import KafkaProducer
from prometheus_client import REGISTRY

from srlm.bus import RecordProducer
from srlm.config import SRLMConfig
from srlm.runtime.pipeline import StageWorker
from srlm.runtime.runconfig import to_yaml
from srlm.v1 import records_pb2 as pb
from tests.bus.workers import wait_until
from tests.fixtures.kafka import wait_for_records

pytestmark = pytest.mark.kafka


def prompt(pid: str, run: str = "live", iteration: int = 1, text: str = "Name a colour.", n: int = 2) -> pb.Prompt:
    return pb.Prompt(meta=pb.RecordMeta(run_id=run, iteration=iteration, id=pid), text=text,
                     sampling=pb.SamplingParams(n=n))


def test_only_records_of_a_live_run_within_limits_reach_the_engine(kafka_config, kafka_topics):
    config = SRLMConfig(kafka=kafka_config, services={"max_prompt_chars": 100, "max_n": 8})
    engine_saw = []

    def engine(msg: pb.Prompt):
        engine_saw.append(msg.meta.id)
        out = pb.CandidateSet(meta=pb.RecordMeta(run_id=msg.meta.run_id, iteration=msg.meta.iteration,
                                                 id=f"cands-{msg.meta.id}"), prompt_id=msg.meta.id)
        return [("candidates", msg.meta.id, out)]

    worker = StageWorker("sampler", config, "prompts", engine)
    with RecordProducer(kafka_config, kafka_topics) as producer:
        producer.send(kafka_topics.runs, pb.RunState(run_id="live", stage=pb.STAGE_CANDIDATES, iteration=1))
        producer.send(kafka_topics.runs, pb.RunState(run_id="over", stage=pb.STAGE_DONE, iteration=2))
        producer.flush()
    worker.start()
    try:
        refused = {
            "unknown": prompt("p-unknown", run="nobody"),
            "finished": prompt("p-over", run="over", iteration=2),
            "stale": prompt("p-stale", iteration=0),
            "ahead": prompt("p-ahead", iteration=2),
            "too-long": prompt("p-long", text="x" * 101),
            "too-many": prompt("p-many", n=9),
        }
        with RecordProducer(kafka_config, kafka_topics) as producer:
            producer.send(kafka_topics.prompts, prompt("p-good-1"))
            for msg in refused.values():
                producer.send(kafka_topics.prompts, msg)
            producer.flush()
        raw = KafkaProducer(**kafka_config.client_kwargs(), acks="all")
        raw.send(kafka_topics.prompts.name, prompt("p-no-header").SerializeToString()).get(timeout=30)
        raw.close()
        # a run the controller starts after the stage came up is looked up, not refused
        with RecordProducer(kafka_config, kafka_topics) as producer:
            producer.send(kafka_topics.runs, pb.RunState(run_id="new", stage=pb.STAGE_CANDIDATES, iteration=1,
                                                         config_yaml=to_yaml(config)))
            producer.flush()
            producer.send(kafka_topics.prompts, prompt("p-good-2", run="new"))
            producer.flush()

        dead = wait_for_records(kafka_config, kafka_topics.deadletter, len(refused) + 1, timeout_s=90)
        wait_until(lambda: len(engine_saw) == 2, 60, "the two good prompts")
        # and the operators see them: srlm_dead_letters_total by reason (the dashboard's panel)
        wait_until(lambda: (REGISTRY.get_sample_value("srlm_dead_letters_total",
                                                      {"service": "sampler", "kind": "rejected"}) or 0) >= len(refused),
                   30, "the dead letters in the metrics")
    finally:
        worker.stop()

    assert sorted(engine_saw) == ["p-good-1", "p-good-2"]
    assert len(wait_for_records(kafka_config, kafka_topics.candidates, 2)) == 2
    by_id = {pb.Prompt.FromString(d.value.value).meta.id: d.value for d in dead}
    assert by_id["p-no-header"].error_type == "no_schema"
    reasons = {what: by_id[msg.meta.id].error for what, msg in refused.items()}
    assert all(by_id[msg.meta.id].error_type == "rejected" for msg in refused.values())
    assert "'nobody' is unknown to the controller" in reasons["unknown"]
    assert "'over' is done" in reasons["finished"]
    assert "iteration 0 of run 'live', which is in iteration 1" in reasons["stale"]
    assert "iteration 2 of run 'live', which is in iteration 1" in reasons["ahead"]
    assert "text has 101 characters; the limit is 100" in reasons["too-long"]
    assert "sampling.n is 9; the limit is services.max_n=8" in reasons["too-many"]
