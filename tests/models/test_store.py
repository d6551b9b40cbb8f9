"""The model store on a real directory: publishing, checksums, status and datasets.

These versions are small files, not models: the store's logic does not depend on what the
files hold (the real model is covered in test_importer.py).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from srlm.models.store import (
    CorruptVersion,
    DatasetNotFound,
    ModelStore,
    ModelStoreError,
    VersionNotFound,
    sha256_file,
)


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "store")


def publish(store: ModelStore, version_id: str, content: bytes = b"weights", **kw):
    kw = {"parent_id": None, "run_id": "run-1", "iteration": 0, "kind": "base", **kw}
    with store.staging(version_id) as staged:
        (staged / "model.safetensors").write_bytes(content)
        (staged / "sub").mkdir()
        (staged / "sub" / "config.json").write_text('{"a": 1}')
        return store.publish(staged, version_id=version_id, **kw)


def test_publish_writes_manifest_with_checksums_of_every_file(store: ModelStore):
    manifest = publish(store, "m1", parent_id="m0", iteration=1, kind="sft", training_data="sft-1",
                       training_data_sha256="ab" * 32, metrics={"loss": 1.5}, extra={"steps": 3})
    folder = store.path("m1")
    assert folder == store.root / "versions" / "m1"
    assert manifest.files == {
        "model.safetensors": sha256_file(folder / "model.safetensors"),
        "sub/config.json": sha256_file(folder / "sub" / "config.json"),
    }
    on_disk = json.loads((folder / "manifest.json").read_text())
    assert on_disk["parent_id"] == "m0" and on_disk["iteration"] == 1 and on_disk["kind"] == "sft"
    assert on_disk["training_data"] == "sft-1" and on_disk["metrics"] == {"loss": 1.5}
    assert on_disk["created_at"].endswith("+00:00")
    assert store.get("m1") == manifest
    assert len(store.manifest_sha256("m1")) == 64
    assert list((store.root / ".staging").iterdir()) == []


def test_unpublished_staging_is_invisible_and_removed_on_error(store: ModelStore):
    with pytest.raises(RuntimeError):
        with store.staging("m1") as staged:
            (staged / "model.safetensors").write_bytes(b"half a model")
            assert not store.exists("m1") and store.list() == []
            raise RuntimeError("writer crashed")
    assert not store.exists("m1")
    assert list((store.root / ".staging").iterdir()) == []


def test_replayed_publish_keeps_the_first_version(store: ModelStore):
    first = publish(store, "m2", b"first")
    again = publish(store, "m2", b"second, from a replay")
    assert again == first
    assert (store.path("m2") / "model.safetensors").read_bytes() == b"first"
    assert list((store.root / ".staging").iterdir()) == []


def test_concurrent_publishers_of_one_id_make_one_version(store: ModelStore):
    barrier = threading.Barrier(4)
    results = []

    def writer(i: int) -> None:
        with store.staging("m3") as staged:
            (staged / "model.safetensors").write_bytes(f"writer {i}".encode())
            barrier.wait()
            results.append(store.publish(staged, version_id="m3", parent_id=None, run_id=None,
                                         iteration=0, kind="base"))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(r == results[0] for r in results)
    store.verify("m3")
    assert [m.version_id for m in store.list()] == ["m3"]


def test_truncated_or_missing_file_is_refused(store: ModelStore):
    publish(store, "m1", b"x" * 1000)
    weights = store.root / "versions" / "m1" / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(10)
    with pytest.raises(CorruptVersion, match=r"'m1'.*model.safetensors: sha256 .* \(10 bytes\)"):
        store.path("m1")
    assert store.path("m1", verify=False).is_dir()  # explicitly unverified access still works

    publish(store, "m2")
    (store.root / "versions" / "m2" / "sub" / "config.json").unlink()
    with pytest.raises(CorruptVersion, match="sub/config.json: missing"):
        store.verify("m2")


def test_unreadable_manifest_is_corrupt_and_skipped_by_list(store: ModelStore):
    publish(store, "good")
    publish(store, "bad")
    (store.root / "versions" / "bad" / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptVersion, match="'bad'"):
        store.get("bad")
    assert [m.version_id for m in store.list()] == ["good"]


def test_unknown_version_and_bad_arguments(store: ModelStore):
    with pytest.raises(VersionNotFound, match="'nope'"):
        store.get("nope")
    with pytest.raises(VersionNotFound):
        store.path("nope")
    assert not store.exists("nope")
    for bad in ("run/m2", "..", ".hidden", "", "a b", "x" * 129):
        with pytest.raises(ValueError, match="invalid version id"):
            store.exists(bad)
    with pytest.raises(ValueError, match="invalid kind"):
        publish(store, "m1", kind="rlhf")
    with pytest.raises(ValueError, match="invalid iteration"):
        publish(store, "m1", iteration=-1)
    with pytest.raises(ValueError, match="staging folder"):
        store.publish(store.root, version_id="m1", parent_id=None, run_id=None, iteration=0, kind="base")


def test_list_latest_by_run_and_status(store: ModelStore):
    publish(store, "a-m0", run_id="a")
    publish(store, "b-m0", run_id="b")
    publish(store, "a-m1", run_id="a", parent_id="a-m0", iteration=1, kind="sft")
    assert [m.version_id for m in store.list()] == ["a-m0", "b-m0", "a-m1"]
    assert [m.version_id for m in store.list(run_id="a")] == ["a-m0", "a-m1"]
    assert store.latest().version_id == "a-m1"
    assert store.latest(run_id="b").version_id == "b-m0"
    assert store.latest(run_id="c") is None
    assert store.latest(status="promoted") is None
    store.set_status("a-m0", "promoted", "base model")
    assert store.latest(status="promoted").version_id == "a-m0"


def test_status_promote_reject_rollback(store: ModelStore):
    for i in range(3):
        publish(store, f"m{i}", parent_id=f"m{i - 1}" if i else None, iteration=i)
    assert store.status("m1") == ("published", "")
    assert store.promoted() is None
    store.set_status("m0", "promoted", "base")
    store.set_status("m1", "promoted", "win rate 0.61")
    assert store.promoted().version_id == "m1"
    store.set_status("m2", "rejected", "win rate 0.40")
    assert store.status("m2") == ("rejected", "win rate 0.40")
    assert store.promoted().version_id == "m1"
    # Roll back m1: m0 is promoted again, after m1, so it is the current one.
    store.set_status("m1", "rolled_back", "length drift")
    store.set_status("m0", "promoted", "rollback of m1")
    assert store.promoted().version_id == "m0"
    history = json.loads((store.root / "status" / "m1.json").read_text())["history"]
    assert [h["status"] for h in history] == ["promoted"]
    store.verify("m1")  # status lives beside the version: checksums still hold
    with pytest.raises(ValueError, match="invalid status"):
        store.set_status("m1", "deployed")
    with pytest.raises(VersionNotFound):
        store.set_status("nope", "promoted")


def test_delete_removes_version_and_status(store: ModelStore):
    publish(store, "m1")
    store.set_status("m1", "rejected")
    store.delete("m1")
    assert not store.exists("m1") and store.list() == []
    publish(store, "m1", b"new")
    assert store.status("m1") == ("published", "")


def test_datasets_are_immutable_and_checksummed(store: ModelStore):
    rows = [{"prompt": "hi", "chosen": "hello", "rejected": "go away"}, {"prompt": "ünïcode", "n": 2}]
    digest = store.put_dataset("pairs-m2", rows)
    assert store.get_dataset("pairs-m2") == rows
    assert digest == store.dataset_sha256("pairs-m2") == sha256_file(store.root / "datasets" / "pairs-m2.jsonl")
    assert store.put_dataset("pairs-m2", [dict(r) for r in rows]) == digest  # same content: no-op
    with pytest.raises(ModelStoreError, match="already exists with different content"):
        store.put_dataset("pairs-m2", rows[:1])
    assert store.get_dataset("pairs-m2") == rows
    with pytest.raises(DatasetNotFound):
        store.get_dataset("nope")
    with pytest.raises(ValueError, match="invalid dataset name"):
        store.put_dataset("../escape", rows)
    assert store.put_dataset("empty", []) == sha256_file(store.root / "datasets" / "empty.jsonl")
    assert store.get_dataset("empty") == []
