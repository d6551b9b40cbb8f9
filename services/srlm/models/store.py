"""The model store: versions as Hugging Face folders plus a manifest, and training datasets.

Layout under ``root`` (a local directory now, a shared volume on Kubernetes; everything is
done with ``rename``/``link``, which are atomic on one POSIX file system)::

    versions/<version_id>/        save_pretrained() output + manifest.json (immutable once published)
    status/<version_id>.json      published | promoted | rejected | rolled_back, with its history
    datasets/<name>.jsonl         training sets (immutable; referenced by name + sha256)
    .staging/                     versions being written, renamed into versions/ when complete

A reader never sees half a version: a version folder only appears by the rename that
publishes it, and its manifest lists the sha256 of every file, so a later truncation or
bit flip is refused with ``CorruptVersion`` when it is loaded.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# manifest.extra key of an adapter version (a PEFT LoRA adapter only): the full version it applies to
ADAPTER_BASE = "adapter_base"
KINDS = ("base", "sft", "dpo", "grpo", "ppo", "reward_model")
STATUSES = ("published", "promoted", "rejected", "rolled_back")
_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_CHUNK = 1 << 20


class ModelStoreError(Exception):
    """Base of the store's errors."""


class VersionNotFound(ModelStoreError):
    """No published version has this id."""


class CorruptVersion(ModelStoreError):
    """A version's files do not match its manifest (missing, truncated or altered)."""


class DatasetNotFound(ModelStoreError):
    """No dataset has this name."""


@dataclass
class Manifest:
    """What a version is and where it came from; ``manifest.json`` inside the version folder."""

    version_id: str
    parent_id: str | None
    run_id: str | None
    iteration: int
    kind: str  # one of KINDS
    created_at: str  # ISO 8601 UTC
    training_data: str | None  # dataset name in the store
    training_data_sha256: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # relpath -> sha256
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("manifest is not a JSON object")
        names = {f.name for f in fields(cls)}
        missing = names - data.keys()
        if missing:
            raise ValueError(f"manifest lacks {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in names})


def validate_id(value: str, what: str = "version id") -> str:
    """Ids name folders and files: ``[A-Za-z0-9._-]``, 1-128 characters, not hidden."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ValueError(f"invalid {what} {value!r}: use 1-128 characters from [A-Za-z0-9._-]")
    if value.startswith("."):
        raise ValueError(f"invalid {what} {value!r}: must not start with '.'")
    return value


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write beside ``path`` and rename over it: readers see the old or the new file, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ModelStore:
    """Model versions and datasets under one root directory."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.status_dir = self.root / "status"
        self.datasets_dir = self.root / "datasets"
        self.staging_dir = self.root / ".staging"
        # Training rounds' work dirs (checkpoints): on the store's volume, so a round restarted on
        # another node, or another pod of a Kubernetes Job, resumes where the last one stopped.
        self.checkpoints_dir = self.root / "checkpoints"
        for d in (self.versions_dir, self.status_dir, self.datasets_dir, self.staging_dir):
            d.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"ModelStore({str(self.root)!r})"

    # ------------------------------------------------------------------ publishing

    @contextmanager
    def staging(self, version_id: str) -> Iterator[Path]:
        """A fresh folder on the store's file system to write a version into.

        Pass it to ``publish`` inside the ``with`` block; whatever is left unpublished when
        the block ends (an error, a crash of the writer's logic) is removed.
        """
        validate_id(version_id)
        staged = self.staging_dir / f"{version_id}.{uuid.uuid4().hex[:12]}"
        staged.mkdir()
        try:
            yield staged
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def publish(self, staged_dir: Path, *, version_id: str, parent_id: str | None, run_id: str | None,
                iteration: int, kind: str, training_data: str | None = None,
                training_data_sha256: str | None = None, metrics: dict[str, float] | None = None,
                extra: dict[str, Any] | None = None) -> Manifest:
        """Checksum ``staged_dir``, write its manifest and rename it into ``versions/<version_id>``.

        Publishing an id that exists (a replay after a crash) returns the existing manifest
        and discards ``staged_dir``: one id never names two versions.
        """
        validate_id(version_id)
        if parent_id is not None:
            validate_id(parent_id, "parent id")
        if kind not in KINDS:
            raise ValueError(f"invalid kind {kind!r}: expected one of {KINDS}")
        if not isinstance(iteration, int) or iteration < 0:
            raise ValueError(f"invalid iteration {iteration!r}: expected an integer >= 0")
        staged_dir = Path(staged_dir)
        if staged_dir.parent.resolve() != self.staging_dir.resolve():
            raise ValueError(f"{staged_dir} is not a staging folder of {self}: use ModelStore.staging()")
        if self.exists(version_id):
            log.info("version %s already published; discarding the replayed copy", version_id)
            shutil.rmtree(staged_dir, ignore_errors=True)
            return self.get(version_id)
        (staged_dir / MANIFEST).unlink(missing_ok=True)
        files = self._checksum_tree(staged_dir, fsync=True)
        if not files:
            raise ValueError(f"nothing to publish: {staged_dir} is empty")
        manifest = Manifest(
            version_id=version_id, parent_id=parent_id, run_id=run_id, iteration=iteration, kind=kind,
            created_at=_utc_now(), training_data=training_data, training_data_sha256=training_data_sha256,
            metrics={k: float(v) for k, v in (metrics or {}).items()}, files=files, extra=dict(extra or {}),
        )
        _write_atomic(staged_dir / MANIFEST, manifest.to_json().encode())
        _fsync_dir(staged_dir)
        final = self.versions_dir / version_id
        try:
            # A directory rename onto a non-empty directory fails: the first publisher wins.
            os.rename(staged_dir, final)
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            log.info("version %s was published concurrently; discarding this copy", version_id)
            shutil.rmtree(staged_dir, ignore_errors=True)
            return self.get(version_id)
        _fsync_dir(self.versions_dir)
        log.info("published model version %s (%s, %d files)", version_id, kind, len(files))
        return manifest

    @staticmethod
    def _checksum_tree(folder: Path, fsync: bool = False) -> dict[str, str]:
        files: dict[str, str] = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = path.relative_to(folder).as_posix()
            if rel == MANIFEST:
                continue
            if fsync:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            files[rel] = sha256_file(path)
        return files

    def delete(self, version_id: str) -> None:
        """Remove a version (and its status) at once: it is renamed away first, then deleted."""
        self.get(version_id)
        doomed = self.staging_dir / f"{version_id}.deleted.{uuid.uuid4().hex[:12]}"
        os.rename(self.versions_dir / version_id, doomed)
        (self.status_dir / f"{version_id}.json").unlink(missing_ok=True)
        shutil.rmtree(doomed, ignore_errors=True)
        log.info("deleted model version %s", version_id)

    # ------------------------------------------------------------------ reading

    def exists(self, version_id: str) -> bool:
        validate_id(version_id)
        return (self.versions_dir / version_id / MANIFEST).is_file()

    def get(self, version_id: str) -> Manifest:
        validate_id(version_id)
        path = self.versions_dir / version_id / MANIFEST
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise VersionNotFound(f"model version {version_id!r} not found in {self.root}") from None
        try:
            return Manifest.from_json(text)
        except (ValueError, TypeError) as err:
            raise CorruptVersion(f"model version {version_id!r}: unreadable {path}: {err}") from None

    def adapter_base(self, version_id: str) -> str | None:
        """The full version that the adapter version ``version_id`` applies to; None for a full version."""
        return self.get(version_id).extra.get(ADAPTER_BASE)

    def manifest_sha256(self, version_id: str) -> str:
        """sha256 of the manifest file: one hash that pins every file of the version."""
        self.get(version_id)
        return sha256_file(self.versions_dir / version_id / MANIFEST)

    def verify(self, version_id: str) -> None:
        """Raise ``CorruptVersion`` unless every file listed in the manifest is intact."""
        manifest = self.get(version_id)
        folder = self.versions_dir / version_id
        problems = []
        for rel, expected in sorted(manifest.files.items()):
            path = folder / rel
            if not path.is_file():
                problems.append(f"{rel}: missing")
                continue
            actual = sha256_file(path)
            if actual != expected:
                problems.append(f"{rel}: sha256 {actual[:12]}... != manifest {expected[:12]}... "
                                f"({path.stat().st_size} bytes)")
        if problems:
            raise CorruptVersion(f"model version {version_id!r} at {folder} is corrupt, refusing it: "
                                 + "; ".join(problems))

    def path(self, version_id: str, verify: bool = True) -> Path:
        """The version's Hugging Face folder, checked against its manifest unless ``verify=False``."""
        if verify:
            self.verify(version_id)
        else:
            self.get(version_id)
        return self.versions_dir / version_id

    def list(self, run_id: str | None = None) -> list[Manifest]:
        """Published versions (of ``run_id`` if given), oldest first. Unreadable ones are logged."""
        out = []
        for folder in self.versions_dir.iterdir():
            if not (folder / MANIFEST).is_file():
                continue
            try:
                manifest = self.get(folder.name)
            except (ModelStoreError, ValueError) as err:
                log.warning("skipping %s: %s", folder, err)
                continue
            if run_id is None or manifest.run_id == run_id:
                out.append(manifest)
        return sorted(out, key=lambda m: (m.created_at, m.version_id))

    def latest(self, run_id: str | None = None, status: str | None = None) -> Manifest | None:
        candidates = self.list(run_id)
        if status is not None:
            _check_status(status)
            candidates = [m for m in candidates if self.status(m.version_id)[0] == status]
        return candidates[-1] if candidates else None

    # ------------------------------------------------------------------ status

    def _status_record(self, version_id: str) -> dict[str, Any]:
        self.get(version_id)
        path = self.status_dir / f"{version_id}.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return {"status": "published", "reason": "", "updated_at": "", "history": []}

    def status(self, version_id: str) -> tuple[str, str]:
        record = self._status_record(version_id)
        return record["status"], record["reason"]

    def set_status(self, version_id: str, status: str, reason: str = "") -> None:
        """Record promoted/rejected/rolled_back beside the version (its checksums stay valid)."""
        _check_status(status)
        record = self._status_record(version_id)
        if record["updated_at"]:
            record["history"].append({k: record[k] for k in ("status", "reason", "updated_at")})
        record.update(status=status, reason=reason, updated_at=_utc_now())
        _write_atomic(self.status_dir / f"{version_id}.json", json.dumps(record, indent=2).encode())

    def promoted(self, run_id: str | None = None) -> Manifest | None:
        """The version promoted most recently (of ``run_id`` if given) that is still promoted."""
        best: tuple[str, Manifest] | None = None
        for manifest in self.list(run_id):
            record = self._status_record(manifest.version_id)
            if record["status"] == "promoted" and (best is None or record["updated_at"] > best[0]):
                best = (record["updated_at"], manifest)
        return best[1] if best else None

    # ------------------------------------------------------------------ datasets

    def put_dataset(self, name: str, rows: list[dict]) -> str:
        """Store ``rows`` as ``datasets/<name>.jsonl`` and return its sha256.

        Datasets are immutable: the same content again is a no-op, different content under
        an existing name is an error (a manifest may already cite the old hash).
        """
        validate_id(name, "dataset name")
        data = "".join(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n" for row in rows).encode()
        digest = hashlib.sha256(data).hexdigest()
        final = self.datasets_dir / f"{name}.jsonl"
        fd, tmp = tempfile.mkstemp(dir=self.datasets_dir, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, final)  # fails if the name exists: never overwrite a dataset
            except FileExistsError:
                existing = sha256_file(final)
                if existing != digest:
                    raise ModelStoreError(f"dataset {name!r} already exists with different content "
                                          f"(sha256 {existing[:12]}..., new {digest[:12]}...)") from None
        finally:
            Path(tmp).unlink(missing_ok=True)
        return digest

    def get_dataset(self, name: str) -> list[dict]:
        validate_id(name, "dataset name")
        path = self.datasets_dir / f"{name}.jsonl"
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise DatasetNotFound(f"dataset {name!r} not found in {self.root}") from None
        return [json.loads(line) for line in text.splitlines() if line]

    def dataset_sha256(self, name: str) -> str:
        validate_id(name, "dataset name")
        path = self.datasets_dir / f"{name}.jsonl"
        if not path.is_file():
            raise DatasetNotFound(f"dataset {name!r} not found in {self.root}")
        return sha256_file(path)


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"invalid status {status!r}: expected one of {STATUSES}")
