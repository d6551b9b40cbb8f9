"""Helpers for building records: their metadata and the per-record sampling seed."""

from __future__ import annotations

import hashlib

from srlm.v1 import records_pb2


def meta(run_id: str, iteration: int, model_version: str, record_id: str, trace_id: str = "") -> records_pb2.RecordMeta:
    m = records_pb2.RecordMeta(run_id=run_id, iteration=iteration, model_version=model_version,
                               id=record_id, trace_id=trace_id or record_id)
    m.created_at.GetCurrentTime()
    return m


def child_meta(parent: records_pb2.RecordMeta, record_id: str, model_version: str | None = None) -> records_pb2.RecordMeta:
    """Metadata of a record derived from ``parent``: same run, iteration and trace."""
    return meta(parent.run_id, parent.iteration, model_version or parent.model_version, record_id, parent.trace_id)


def reward_of(judged: records_pb2.JudgedCandidate) -> float | None:
    """A judged candidate's reward (the weighted sum of its reward sources), None when none scored it."""
    return judged.reward if judged.HasField("reward") else None


def seed_for(*parts: object) -> int:
    """A stable 63-bit sampling seed from ids: a replayed record is sampled exactly as before."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


MODEL_KINDS = {"base": records_pb2.MODEL_KIND_BASE, "sft": records_pb2.MODEL_KIND_SFT, "dpo": records_pb2.MODEL_KIND_DPO,
               "grpo": records_pb2.MODEL_KIND_GRPO, "ppo": records_pb2.MODEL_KIND_PPO,
               "reward_model": records_pb2.MODEL_KIND_REWARD_MODEL}
MODEL_STATUSES = {"published": records_pb2.MODEL_STATUS_PUBLISHED, "promoted": records_pb2.MODEL_STATUS_PROMOTED,
                  "rejected": records_pb2.MODEL_STATUS_REJECTED, "rolled_back": records_pb2.MODEL_STATUS_ROLLED_BACK}


def model_version_record(store, version_id: str, status: str | None = None, reason: str | None = None
                         ) -> records_pb2.ModelVersion:
    """The ``srlm.models`` record of a version in the store (its status there unless given)."""
    m = store.get(version_id)
    stored_status, stored_reason = store.status(version_id)
    record = records_pb2.ModelVersion(
        version_id=m.version_id, parent_id=m.parent_id or "", run_id=m.run_id or "", iteration=m.iteration,
        kind=MODEL_KINDS.get(m.kind, records_pb2.MODEL_KIND_UNSPECIFIED),
        status=MODEL_STATUSES[status or stored_status], uri=str(store.path(version_id, verify=False)),
        manifest_sha256=store.manifest_sha256(version_id), training_data_sha256=m.training_data_sha256 or "",
        metrics=m.metrics, reason=stored_reason if reason is None else reason)
    record.created_at.GetCurrentTime()
    return record
