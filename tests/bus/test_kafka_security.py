"""Kafka security without a broker: config validation, the ACL table (checked against what the
services' code consumes and produces) and the translation of refused connections."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from kafka.errors import KafkaConnectionError, SaslAuthenticationFailedError, TopicAuthorizationFailedError

from srlm.bus.acls import BUS_USE, DEAD, SERVICES, Acl, format_kafka_acls, format_strimzi, main, service_acls
from srlm.bus.security import authorization_hint, explain_connect_failure
from srlm.bus.topics import TopicRegistry
from srlm.config import ConfigError, KafkaConfig, parse_config

SRLM = Path(__file__).resolve().parents[2] / "services" / "srlm"


# --------------------------------------------------------------------------- config validation


@pytest.mark.parametrize("kafka, field", [
    ({"security_protocol": "SSL"}, "ssl_cafile"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "u",
      "sasl_plain_password": "p"}, "ssl_cafile"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_password": "p"},
     "sasl_plain_username"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_plain_username": "u"},
     "sasl_plain_password"),
    ({"security_protocol": "SSL", "ssl_cafile": "ca.pem", "ssl_certfile": "c.pem"}, "ssl_keyfile"),
    ({"security_protocol": "SSL", "ssl_cafile": "ca.pem", "ssl_keyfile": "c.key"}, "ssl_certfile"),
])
def test_incomplete_security_settings_name_the_missing_field(kafka, field):
    with pytest.raises(ConfigError, match=rf"kafka: .*{field} is required"):
        parse_config({"kafka": kafka}, environ={})


def test_complete_security_settings_are_accepted():
    mtls = KafkaConfig(security_protocol="SSL", ssl_cafile="ca.pem", ssl_certfile="c.pem", ssl_keyfile="c.key")
    assert mtls.client_kwargs()["ssl_certfile"] == "c.pem"
    scram = KafkaConfig(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_plain_username="u",
                        sasl_plain_password="p", ssl_cafile="ca.pem")
    assert scram.client_kwargs()["sasl_plain_username"] == "u"
    assert KafkaConfig().security_protocol == "PLAINTEXT"  # the default needs nothing


# --------------------------------------------------------------------------- the ACL table


def _granted(acls: list[Acl], principal: str, operation: str, resource: str = "TOPIC") -> set[str]:
    return {a.name for a in acls if a.principal == principal and a.operation == operation and a.resource == resource}


def test_each_service_reads_and_writes_only_its_topics():
    acls = service_acls("p")
    assert acls == sorted(set(acls))
    sampler = "User:srlm-sampler"
    assert _granted(acls, sampler, "READ") == {"p.prompts"}
    assert _granted(acls, sampler, "WRITE") == {"p.candidates", "p.deadletter"}
    assert _granted(acls, sampler, "READ", "GROUP") == {"p-sampler"}
    assert _granted(acls, sampler, "WRITE", "TRANSACTIONAL_ID") == {"p-sampler."}
    assert _granted(acls, sampler, "CREATE") == set()
    assert _granted(acls, "User:srlm-judge", "WRITE") == {"p.judgments", "p.pairs", "p.deadletter"}
    assert _granted(acls, "User:srlm-controller", "CREATE") == {"p."}
    assert _granted(acls, "User:srlm-controller", "READ", "GROUP") == set()  # follows outside any group
    # Every topic name in the table is a real srlm topic.
    names = {t.name for t in TopicRegistry.from_config(KafkaConfig(topic_prefix="p"))}
    assert {a.name for a in acls if a.resource == "TOPIC" and a.pattern == "LITERAL"} <= names
    custom = service_acls("p", {"sampler": "User:CN=sampler"})
    assert _granted(custom, "User:CN=sampler", "READ") == {"p.prompts"}


def test_acl_table_matches_the_services_code():
    """The table says what the code does: stage inputs and outputs, the controller's reads."""
    from srlm.controller.service import FOLLOWED

    topics = {f.split(".")[-1] for f in (t.name for t in TopicRegistry.from_config(KafkaConfig()))}
    for service in SERVICES:
        source = (SRLM / service / "service.py").read_text()
        stage = re.search(r'StageWorker\("(\w+)", config, "(\w+)"', source)
        if service == "controller":
            assert stage is None
            assert set(FOLLOWED) == set(BUS_USE["controller"].reads)
            sent = set(re.findall(r'(?:_send|\.send)\("(\w+)"', "".join(
                p.read_text() for p in (SRLM / "controller").glob("*.py"))))
            assert sent == set(BUS_USE["controller"].produces)
            continue
        assert stage.groups() == (service, BUS_USE[service].consumes)
        # Handlers return ("what", key, message) triples.
        produced = set(re.findall(r'\(\s*\*?\(?"(\w+)",\s*\w', source)) & topics
        assert produced | {DEAD} == set(BUS_USE[service].produces), service
    trainer = (SRLM / "trainer" / "service.py").read_text()
    assert set(re.findall(r'read_topic\(config, "(\w+)"\)', trainer)) == set(BUS_USE["trainer"].reads)


def test_acls_print_for_a_cluster(capsys):
    acls = service_acls("prod-srlm")
    commands = format_kafka_acls(acls, "kafka:9093").splitlines()
    assert len(commands) == len(acls)
    assert ("kafka-acls.sh --bootstrap-server kafka:9093 --command-config admin.properties --add "
            "--allow-principal User:srlm-sampler --operation Write --transactional-id prod-srlm-sampler. "
            "--resource-pattern-type prefixed") in commands
    import yaml

    users = yaml.safe_load(format_strimzi(acls))["users"]
    assert set(users) == {f"srlm-{s}" for s in SERVICES}
    assert {"resource": {"type": "group", "name": "prod-srlm-judge", "patternType": "literal"},
            "operations": ["Read"]} in users["srlm-judge"]["authorization"]["acls"]
    assert main(["--prefix", "x", "--format", "kafka-acls"]) == 0
    assert "--topic x.prompts" in capsys.readouterr().out
    assert all(a.to_kafka().resource_pattern.resource_name == a.name for a in acls)


# --------------------------------------------------------------------------- refused connections


SCRAM = KafkaConfig(bootstrap_servers=["h:1"], security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                    sasl_plain_username="alice", sasl_plain_password="x", ssl_cafile="ca.pem")
MTLS = KafkaConfig(bootstrap_servers=["h:1"], security_protocol="SSL", ssl_cafile="ca.pem")


@pytest.mark.parametrize("cfg, error, expected", [
    (SCRAM, SaslAuthenticationFailedError("invalid credentials"),
     "kafka.sasl_plain_password: the broker at h:1 refused SCRAM-SHA-512 authentication for user 'alice'"),
    (MTLS, KafkaConnectionError("[SSL: SSLV3_ALERT_BAD_CERTIFICATE] sslv3 alert bad certificate"),
     "kafka.ssl_certfile: the broker at h:1 requires a client certificate"),
    (MTLS, KafkaConnectionError("Handshake failed: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
                                "self-signed certificate in certificate chain"), "kafka.ssl_cafile: "),
    (MTLS, KafkaConnectionError("Handshake failed: [SSL: UNEXPECTED_EOF_WHILE_READING] EOF"),
     "kafka.security_protocol: the listener at h:1 does not speak SSL"),
    (KafkaConfig(bootstrap_servers=["h:1"]), KafkaConnectionError("socket disconnected"),
     "kafka.security_protocol: the broker at h:1 closed every connection"),
])
def test_refused_connections_name_the_setting(cfg, error, expected):
    assert explain_connect_failure(cfg, [error]).startswith(expected)


def test_an_unreachable_broker_is_left_to_the_clients_own_wait():
    assert explain_connect_failure(SCRAM, [KafkaConnectionError("Connection refused")]) is None
    assert explain_connect_failure(SCRAM, []) is None


def test_authorization_hint_names_the_principal():
    hint = authorization_hint(TopicAuthorizationFailedError(), SCRAM, "srlm.pairs")
    assert hint.startswith("kafka ACLs: User:alice (kafka.sasl_plain_username) is not allowed to use topic srlm.pairs")
    assert authorization_hint(ValueError(), SCRAM) is None
