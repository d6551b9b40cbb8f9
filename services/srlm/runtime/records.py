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


def seed_for(*parts: object) -> int:
    """A stable 63-bit sampling seed from ids: a replayed record is sampled exactly as before."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
