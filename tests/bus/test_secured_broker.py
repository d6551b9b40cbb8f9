"""The bus against a broker that requires what production requires: mTLS on SSL, SCRAM-SHA-512
on SASL_PLAINTEXT and SASL_SSL, and ACLs enforced (srlm.bus.acls, one principal per service).

One broker with the three listeners serves every test here (it starts in ~10 s). A refused
client must fail fast, naming the kafka.* setting, never hang.
"""

from __future__ import annotations

import time

import pytest
from kafka.errors import TopicAuthorizationFailedError, TransactionalIdAuthorizationFailedError

from srlm.bus import ProduceError, RecordProducer, SeenIds, TopicRegistry, Worker, ensure_topics, read_to_end
from srlm.bus.acls import group_id, service_acls
from srlm.bus.local_broker import BrokerError, LocalKafkaBroker
from srlm.bus.security import KafkaAccessError
from srlm.config import ConfigError
from tests.bus.samples import prompt, samples
from tests.bus.workers import candidates_for, running
from tests.fixtures.kafka import TEST_KAFKA_SETTINGS, unique_prefix, wait_for_records

pytestmark = pytest.mark.kafka

PROTOCOLS = ("SSL", "SASL_PLAINTEXT", "SASL_SSL")
REFUSED_WITHIN_S = 15


@pytest.fixture(scope="module")
def secured_broker(tmp_path_factory):
    # Users: admin, and srlm-<service> for each service (the principals of srlm.bus.acls).
    broker = LocalKafkaBroker(tmp_path_factory.mktemp("kafka-secured"), security="SECURED")
    try:
        broker.start()
    except BrokerError as err:  # its message carries the broker log's tail
        pytest.fail(f"the secured Kafka broker could not start: {err}", pytrace=False)
    yield broker
    broker.stop()


@pytest.fixture
def prefix(secured_broker, request) -> str:
    """A topic prefix of this test's own: its topics made by the admin, the services' ACLs granted."""
    prefix = unique_prefix(request.node.name)
    admin = secured_broker.kafka_config("admin", topic_prefix=prefix)
    ensure_topics(admin, TopicRegistry.from_config(admin))
    secured_broker.grant(service_acls(prefix))
    return prefix


def as_service(broker, service: str, protocol: str, prefix: str, **settings):
    return broker.kafka_config(f"srlm-{service}", protocol, topic_prefix=prefix, **{**TEST_KAFKA_SETTINGS, **settings})


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_round_trip_between_service_principals(secured_broker, prefix, protocol):
    """The sampler writes candidates, the judge reads them: mTLS certificates map to the same
    principals as the SCRAM users, so one ACL table serves every listener."""
    sampler = as_service(secured_broker, "sampler", protocol, prefix)
    judge = as_service(secured_broker, "judge", protocol, prefix)
    topics = TopicRegistry.from_config(sampler)
    sent = samples()["candidates"]
    with RecordProducer(sampler, topics) as producer:
        producer.send(topics.candidates, sent)
        assert producer.flush() == 1
    [record] = read_to_end(judge, topics.candidates)
    assert record.value == sent


def test_exactly_once_worker_as_a_service_principal(secured_broker, prefix):
    """The sampler's Worker on SASL_SSL: its group, its transactional id, its input and output
    topics, nothing else; every prompt ends as exactly one candidate set."""
    n = 40
    promptgen = as_service(secured_broker, "promptgen", "SASL_SSL", prefix)
    sampler = as_service(secured_broker, "sampler", "SASL_SSL", prefix)
    topics = TopicRegistry.from_config(sampler)
    assert sampler.exactly_once
    with RecordProducer(promptgen, topics) as producer:
        for i in range(n):
            producer.send(topics.prompts, prompt(i))
        producer.flush()
    worker = Worker(sampler, group_id(prefix, "sampler"), topics.prompts, candidates_for(topics),
                    instance_id="secured-1", topics=topics)
    with running(worker):
        outputs = wait_for_records(as_service(secured_broker, "judge", "SASL_SSL", prefix), topics.candidates, n,
                                   timeout_s=90)
    assert worker.stats.publish_failures == 0 and worker.stats.dead_letters == 0
    assert len(outputs) == n == len(SeenIds().fresh(outputs))  # none lost, none twice


def test_a_service_is_denied_what_it_does_not_own(secured_broker, prefix):
    sampler = as_service(secured_broker, "sampler", "SASL_SSL", prefix)
    topics = TopicRegistry.from_config(sampler)
    with RecordProducer(secured_broker.kafka_config("admin", topic_prefix=prefix), topics) as admin:
        admin.send(topics.judgments, samples()["judgments"])
        admin.flush()
    with RecordProducer(sampler, topics) as producer:
        producer.send(topics.pairs, samples()["pairs"])  # the judge's topic
        with pytest.raises(ProduceError, match=rf"kafka ACLs: User:srlm-sampler .* is not allowed to use topic "
                                               rf"{topics.pairs.name}"):
            producer.flush(timeout_s=30)
    with pytest.raises(TopicAuthorizationFailedError, match=rf"User:srlm-sampler .* topic {topics.judgments.name}"):
        read_to_end(sampler, topics.judgments, timeout_s=30)
    with pytest.raises(TransactionalIdAuthorizationFailedError, match=rf"transactional id {prefix}-judge.x"):
        RecordProducer(sampler, topics, transactional_id=f"{prefix}-judge.x")
    # Topics are the controller's (or an admin's) to create.
    other = sampler.model_copy(update={"topic_prefix": f"{prefix}-new"})
    with pytest.raises(TopicAuthorizationFailedError, match="may not create srlm topics"):
        ensure_topics(other, TopicRegistry.from_config(other))


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_a_wrong_password_is_refused_quickly_naming_the_setting(secured_broker, prefix, protocol):
    cfg = as_service(secured_broker, "sampler", protocol, prefix, sasl_plain_password="not-the-password")
    started = time.monotonic()
    with pytest.raises(KafkaAccessError, match="kafka.sasl_plain_password: the broker at .* refused SCRAM-SHA-512 "
                                               "authentication for user 'srlm-sampler'") as err:
        RecordProducer(cfg)
    assert time.monotonic() - started < REFUSED_WITHIN_S
    assert isinstance(err.value, ConfigError)  # `srlm` prints it and exits 2


def test_no_client_certificate_on_the_mtls_listener_is_refused_quickly(secured_broker, prefix):
    cfg = as_service(secured_broker, "sampler", "SSL", prefix, ssl_certfile=None, ssl_keyfile=None)
    started = time.monotonic()
    with pytest.raises(KafkaAccessError, match="kafka.ssl_certfile: the broker at .* requires a client certificate"):
        read_to_end(cfg, TopicRegistry.from_config(cfg).prompts)
    assert time.monotonic() - started < REFUSED_WITHIN_S
