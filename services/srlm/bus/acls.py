"""Kafka ACLs per srlm service: each principal reads and writes only its own topics, its own
consumer group and its own transactional ids. The one place that says what a service does on
the bus; the local secured broker applies it and ``srlm kafka-acls`` prints it for a cluster.

    python -m srlm.bus.acls --prefix srlm [--format kafka-acls|strimzi]

Where the table comes from (tests/bus/test_kafka_security.py checks it against the code):
- stage services run ``StageWorker(service, config, <input>, handler)`` (``runtime/pipeline.py``):
  consumer group ``<prefix>-<service>``, transactional ids ``<prefix>-<service>.<instance>``
  (``bus/worker.py``), the handler's outputs, and dead letters for poisonous inputs;
- the trainer also reads its training set (``pairs`` for DPO, ``judgments`` and ``candidates`` for
  GRPO) and, as a Job (``srlm train``), reads
  ``commands`` and publishes ``models``;
- the controller follows ``controller.service.FOLLOWED`` outside any group and publishes
  commands, run state, events and promoted models (``controller/driver.py``). It also creates
  the topics: the other services only check that they exist.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Mapping

SERVICES = ("controller", "promptgen", "sampler", "judge", "trainer")


@dataclass(frozen=True)
class BusUse:
    consumes: str | None = None  # topic read in the service's consumer group (transactional)
    produces: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()  # topics read outside any group (from the beginning)


DEAD = "deadletter"
BUS_USE: dict[str, BusUse] = {
    "controller": BusUse(produces=("commands", "runs", "events", "models"),
                         reads=("runs", "events", "models", "prompts", "candidates", "judgments", "pairs")),
    "promptgen": BusUse(consumes="commands", produces=("prompts", "events", DEAD)),
    "sampler": BusUse(consumes="prompts", produces=("candidates", DEAD)),
    "judge": BusUse(consumes="candidates", produces=("judgments", "pairs", DEAD)),
    "trainer": BusUse(consumes="commands", produces=("models", DEAD),
                      reads=("pairs", "judgments", "candidates", "commands")),
}


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW rule: ``principal`` may ``operation`` on ``resource`` ``name`` (exact or prefix)."""

    principal: str  # "User:srlm-sampler"
    operation: str  # READ, WRITE, DESCRIBE, CREATE
    resource: str   # TOPIC, GROUP, TRANSACTIONAL_ID
    name: str
    pattern: str = "LITERAL"  # or PREFIXED
    host: str = field(default="*", compare=False)

    def to_kafka(self):
        """kafka-python's ``ACL`` (for ``KafkaAdminClient.create_acls``)."""
        from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType

        return ACL(self.principal, self.host, ACLOperation[self.operation], ACLPermissionType.ALLOW,
                   ResourcePattern(ResourceType[self.resource], self.name, ACLResourcePatternType[self.pattern]))

    def kafka_acls_args(self) -> str:
        """The arguments of Kafka's ``kafka-acls.sh --add`` for this rule."""
        flag = {"TOPIC": "--topic", "GROUP": "--group", "TRANSACTIONAL_ID": "--transactional-id"}[self.resource]
        pattern = " --resource-pattern-type prefixed" if self.pattern == "PREFIXED" else ""
        return (f"--allow-principal {self.principal} --operation {self.operation.title()} "
                f"{flag} {self.name}{pattern}")


def default_principal(service: str) -> str:
    """``User:srlm-<service>``: the SCRAM user name, or the CN of the service's certificate."""
    return f"User:srlm-{service}"


def group_id(topic_prefix: str, service: str) -> str:
    return f"{topic_prefix}-{service}"  # runtime/pipeline.py StageWorker.start


def service_acls(topic_prefix: str, principals: Mapping[str, str] | None = None) -> list[Acl]:
    """Every ACL the srlm services need for the topics ``<topic_prefix>.*``, sorted, no duplicates.

    ``principals`` maps a service to its principal (default ``User:srlm-<service>``). WRITE and
    READ imply DESCRIBE in Kafka, so DESCRIBE is only granted on its own where it is the point.
    """
    acls: set[Acl] = set()
    for service, use in BUS_USE.items():
        who = (principals or {}).get(service) or default_principal(service)
        topic = lambda what: f"{topic_prefix}.{what}"  # noqa: E731 - topics.py TopicRegistry names
        # Metadata of every srlm topic: ensure_topics sees that the topics exist (a principal
        # lists only the topics it may describe) instead of trying to create them again.
        acls.add(Acl(who, "DESCRIBE", "TOPIC", f"{topic_prefix}.", "PREFIXED"))
        for what in use.produces:
            acls.add(Acl(who, "WRITE", "TOPIC", topic(what)))
        for what in use.reads + ((use.consumes,) if use.consumes else ()):
            acls.add(Acl(who, "READ", "TOPIC", topic(what)))
        if use.consumes:
            acls.add(Acl(who, "READ", "GROUP", group_id(topic_prefix, service)))
            # Worker: transactional id "<group>.<instance>", one per replica.
            acls.add(Acl(who, "WRITE", "TRANSACTIONAL_ID", f"{group_id(topic_prefix, service)}.", "PREFIXED"))
        if service == "controller":
            acls.add(Acl(who, "CREATE", "TOPIC", f"{topic_prefix}.", "PREFIXED"))
    return sorted(acls)


def format_kafka_acls(acls: list[Acl], bootstrap: str = "$BOOTSTRAP", command_config: str = "admin.properties") -> str:
    return "\n".join(f"kafka-acls.sh --bootstrap-server {bootstrap} --command-config {command_config} --add "
                     f"{a.kafka_acls_args()}" for a in acls) + "\n"


def format_strimzi(acls: list[Acl]) -> str:
    """``spec.authorization.acls`` of one Strimzi ``KafkaUser`` per principal, as YAML."""
    import yaml

    kinds = {"TOPIC": "topic", "GROUP": "group", "TRANSACTIONAL_ID": "transactionalId"}
    users: dict[str, list] = {}
    for a in acls:
        users.setdefault(a.principal.split(":", 1)[1], []).append({
            "resource": {"type": kinds[a.resource], "name": a.name, "patternType": a.pattern.lower()},
            "operations": [a.operation.title()]})
    return yaml.safe_dump({"users": {u: {"authorization": {"type": "simple", "acls": rules}}
                                     for u, rules in users.items()}}, sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="srlm kafka-acls", description="print the ACLs of the srlm services")
    parser.add_argument("--prefix", default="srlm", help="kafka.topic_prefix")
    parser.add_argument("--format", choices=["kafka-acls", "strimzi"], default="kafka-acls")
    parser.add_argument("--bootstrap", default="$BOOTSTRAP", help="for --format kafka-acls")
    args = parser.parse_args(argv)
    acls = service_acls(args.prefix)
    sys.stdout.write(format_strimzi(acls) if args.format == "strimzi" else format_kafka_acls(acls, args.bootstrap))
    return 0


if __name__ == "__main__":
    sys.exit(main())
