"""Pure logic: record ids, headers and the replay filter (no broker)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from srlm.bus import SeenIds, unique_by_id
from srlm.bus.envelope import DecodeFailure, Record, decode_record, envelope_headers, record_id
from srlm.bus.topics import TopicRegistry
from srlm.config import KafkaConfig
from srlm.v1 import records_pb2 as pb
from tests.bus.samples import prompt, samples


def _record(rid: str, offset: int) -> Record:
    return Record(topic="t", partition=0, offset=offset, key=None, value=pb.Prompt(meta=pb.RecordMeta(id=rid)))


def test_seen_ids_recognises_replays_and_counts_them():
    seen = SeenIds()
    assert seen.add("a") and seen.add("b")
    assert not seen.add("a")
    assert seen.duplicates == 1 and len(seen) == 2 and "a" in seen
    records = [_record("x", 0), _record("y", 1), _record("x", 2)]
    assert [r.offset for r in unique_by_id(records)] == [0, 1]


def test_bounded_seen_ids_forget_the_oldest():
    seen = SeenIds(capacity=2, ids=["a", "b"])
    seen.add("c")
    assert "a" not in seen and "b" in seen and "c" in seen


def test_a_record_without_id_cannot_be_deduplicated():
    with pytest.raises(ValueError, match="without an id"):
        SeenIds().add("")


def test_record_ids_and_headers_of_every_type():
    ids = {what: record_id(msg) for what, msg in samples().items()}
    assert ids == {"commands": "cmd-1", "prompts": "prompt-1", "candidates": "cands-1", "judgments": "judg-1",
                   "pairs": "pair-1", "models": "run-1/m2", "runs": "run-1", "events": "",
                   "deadletter": "srlm.prompts/1/42"}
    # A record's id, run, iteration and trace travel in its value, not again as headers.
    assert envelope_headers(prompt(3)) == {"srlm-schema": "srlm.v1.Prompt"}
    assert envelope_headers(prompt(3), {"srlm-trace": "other"}) == {"srlm-schema": "srlm.v1.Prompt",
                                                                    "srlm-trace": "other"}


def test_decode_reasons():
    topics = TopicRegistry.from_config(KafkaConfig())
    raw = lambda value, headers=(): SimpleNamespace(topic="srlm.prompts", partition=0, offset=5,  # noqa: E731
                                                    key=b"k", value=value, headers=list(headers), timestamp=1)
    schema = [("srlm-schema", b"srlm.v1.Prompt")]
    assert decode_record(raw(prompt(1).SerializeToString(), schema), topics.prompts, 1024).value == prompt(1)
    for value, headers, reason in [
        (b"\xff\xff", schema, "decode"),
        (prompt(1).SerializeToString(), [("srlm-schema", b"srlm.v1.JudgmentSet")], "schema"),
        (prompt(1).SerializeToString(), (), "no_schema"),  # parses, but no srlm producer wrote it
        (b"x" * 2000, schema, "oversized"),
    ]:
        with pytest.raises(DecodeFailure) as failure:
            decode_record(raw(value, headers), topics.prompts, 1024)
        assert failure.value.kind == reason
