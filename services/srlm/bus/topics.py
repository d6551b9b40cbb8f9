"""The topic registry: every Kafka topic srlm uses, the protobuf message it carries, and how
it is configured (partitions, compaction for state, retention).

Names are ``<prefix>.<what>`` with ``KafkaConfig.topic_prefix`` (default ``srlm``), so two
deployments (or two tests) can share a cluster without sharing topics.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterator

from google.protobuf.message import Message
from kafka import KafkaAdminClient
from kafka.errors import TopicAlreadyExistsError, TopicAuthorizationFailedError, for_code

from srlm.bus.security import check_connection
from srlm.config import KafkaConfig
from srlm.v1 import records_pb2 as pb

# Room for the record batch header and headers around a value of max_record_bytes.
RECORD_OVERHEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class Topic:
    """One topic: its full name, its value type and its broker-side configuration."""

    name: str
    message: type[Message]
    partitions: int
    replication_factor: int = 1
    compacted: bool = False
    retention_ms: int = -1
    max_message_bytes: int = 8 * 1024 * 1024 + RECORD_OVERHEAD_BYTES

    @property
    def schema(self) -> str:
        """The full protobuf name carried in the ``srlm-schema`` header."""
        return self.message.DESCRIPTOR.full_name

    def configs(self) -> dict[str, str]:
        """Topic-level configs given to the broker on creation."""
        configs = {"max.message.bytes": str(self.max_message_bytes)}
        if self.compacted:
            # State topics: the latest record per key is kept forever.
            configs.update({"cleanup.policy": "compact", "retention.ms": "-1"})
        else:
            configs.update({"cleanup.policy": "delete", "retention.ms": str(self.retention_ms)})
        return configs


@dataclass(frozen=True)
class TopicRegistry:
    """All srlm topics for one ``KafkaConfig``; ``TopicRegistry.from_config(cfg).prompts.name``."""

    commands: Topic    # IterationCommand, key = run id: controller -> stages
    prompts: Topic     # Prompt, key = prompt id
    candidates: Topic  # CandidateSet, key = prompt id
    judgments: Topic   # JudgmentSet, key = prompt id
    pairs: Topic       # PreferencePair, key = prompt id
    models: Topic      # ModelVersion, key = version id (compacted state)
    runs: Topic        # RunState, key = run id (compacted state)
    events: Topic      # RunEvent, key = run id
    deadletter: Topic  # DeadLetter, key = the failed record's key

    @classmethod
    def from_config(cls, cfg: KafkaConfig) -> "TopicRegistry":
        def topic(what: str, message: type[Message], *, data: bool = True, compacted: bool = False) -> Topic:
            # Data topics are the unit of parallelism; control and state topics keep one
            # partition so their records stay in one total order.
            return Topic(
                name=f"{cfg.topic_prefix}.{what}",
                message=message,
                partitions=cfg.partitions if data else 1,
                replication_factor=cfg.replication_factor,
                compacted=compacted,
                retention_ms=cfg.retention_ms,
                max_message_bytes=cfg.max_record_bytes + RECORD_OVERHEAD_BYTES,
            )

        return cls(
            commands=topic("commands", pb.IterationCommand, data=False),
            prompts=topic("prompts", pb.Prompt),
            candidates=topic("candidates", pb.CandidateSet),
            judgments=topic("judgments", pb.JudgmentSet),
            pairs=topic("pairs", pb.PreferencePair),
            models=topic("models", pb.ModelVersion, data=False, compacted=True),
            runs=topic("runs", pb.RunState, data=False, compacted=True),
            events=topic("events", pb.RunEvent, data=False),
            deadletter=topic("deadletter", pb.DeadLetter, data=False),
        )

    def __iter__(self) -> Iterator[Topic]:
        return (getattr(self, f.name) for f in fields(self))

    def by_name(self, name: str) -> Topic:
        for topic in self:
            if topic.name == name:
                return topic
        raise KeyError(f"{name!r} is not an srlm topic (known: {', '.join(t.name for t in self)})")


def ensure_topics(admin_or_config: KafkaAdminClient | KafkaConfig, topics: TopicRegistry | list[Topic]) -> list[str]:
    """Create the topics that do not exist yet; returns the names created. Idempotent."""
    if isinstance(admin_or_config, KafkaConfig):
        check_connection(admin_or_config)
        admin = KafkaAdminClient(**admin_or_config.client_kwargs())
        try:
            return ensure_topics(admin, topics)
        finally:
            admin.close()
    admin = admin_or_config
    wanted = {t.name: t for t in topics}
    existing = set(admin.list_topics())
    missing = [t for name, t in wanted.items() if name not in existing]
    if not missing:
        return []
    response = admin.create_topics(
        {t.name: {"num_partitions": t.partitions, "replication_factor": t.replication_factor, "configs": t.configs()}
         for t in missing},
        raise_errors=False,
    )
    created = []
    for result in response["topics"]:
        error = for_code(result["error_code"])
        if error is TopicAlreadyExistsError:  # another process created it meanwhile
            continue
        if error is TopicAuthorizationFailedError:
            # With ACLs only the controller (or an admin) creates topics; see srlm.bus.acls.
            raise error(f"cannot create topic {result['name']}: this principal may not create srlm topics; "
                        f"start the controller first or create them as an admin")
        if result["error_code"] != 0:
            raise error(f"cannot create topic {result['name']}: {result.get('error_message')}")
        created.append(result["name"])
    if created:
        admin.wait_for_topics(created)  # producers must not race the topic's leader election
    return created
