"""The result store: where checkpoints and uploaded datasets live, and the checkpoint rows that publish them.

Files: behind a small interface so an object store can be added; the default is a directory (`LocalResultStore`)
laid out as `jobs/<job id>/checkpoints/step-<n>/` and `datasets/<team id>/<sha256>.jsonl`. The trainer
writes a job's checkpoints straight into `job_dir(job_id)` (atomically: temp dir + rename, see
rlad_core.checkpoint), so publishing one is recording its location: a row per (job, step) in `checkpoints`,
written after the directory is complete (`describe_checkpoint`, `record_checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from rlad_core.layout import MANIFEST, list_steps, step_dir
from store.errors import NotFound
from store.models import Checkpoint


@dataclass(frozen=True)
class StoredFile:
    name: str  # path inside the checkpoint, '/'-separated
    bytes: int
    sha256: str


class ResultStore(Protocol):
    def job_dir(self, job_id: str) -> Path: ...
    def checkpoint_location(self, job_id: str, step: int) -> str: ...
    def location_of(self, path: Path) -> str: ...
    def checkpoint_dir(self, location: str) -> Path: ...
    def checkpoint_files(self, location: str) -> list[StoredFile]: ...
    def file_path(self, location: str, name: str) -> Path: ...
    def put_dataset(self, team_id: str, sha256: str, chunks: Iterable[bytes]) -> str: ...
    def dataset_path(self, location: str) -> Path: ...
    def delete_job(self, job_id: str) -> None: ...


class LocalResultStore:
    """A directory on a local or shared file system (NFS, a mounted bucket)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def _resolve(self, location: str) -> Path:
        p = (self.root / location).resolve()
        if not p.is_relative_to(self.root):  # a location comes from our DB, but never trust a path blindly
            raise ValueError(f"location {location!r} escapes the result store")
        return p

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def checkpoint_location(self, job_id: str, step: int) -> str:
        return step_dir(f"jobs/{job_id}/checkpoints", step).as_posix()

    def location_of(self, path: Path) -> str:
        """The location (relative to the store) of a path inside it, as the job store records it."""
        return Path(path).resolve().relative_to(self.root).as_posix()

    def checkpoint_dir(self, location: str) -> Path:
        """The checkpoint's directory (a Hugging Face model directory: `from_pretrained` loads it)."""
        return self._resolve(location)

    def checkpoint_files(self, location: str) -> list[StoredFile]:
        """The files of a checkpoint as its manifest lists them (manifest.json itself included)."""
        root = self._resolve(location)
        manifest_path = root / MANIFEST
        raw = manifest_path.read_bytes()
        manifest = json.loads(raw)
        files = [StoredFile(name, info["bytes"], info["sha256"]) for name, info in sorted(manifest["files"].items())]
        files.append(StoredFile(MANIFEST, len(raw), hashlib.sha256(raw).hexdigest()))
        return files

    def file_path(self, location: str, name: str) -> Path:
        p = self._resolve(f"{location}/{name}")
        if not p.is_relative_to(self._resolve(location)):
            raise ValueError(f"file {name!r} escapes its checkpoint")
        return p

    def put_dataset(self, team_id: str, sha256: str, chunks: Iterable[bytes]) -> str:
        location = f"datasets/{team_id}/{sha256}.jsonl"
        final = self._resolve(location)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".tmp-{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return location

    def dataset_path(self, location: str) -> Path:
        return self._resolve(location)

    def delete_job(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)


def get_result_store(root: str | Path) -> ResultStore:
    return LocalResultStore(root)


# ----- checkpoint rows ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointFacts:
    """What a checkpoint row records about a complete checkpoint directory."""

    location: str  # relative to the result store
    bytes: int  # every file, manifest included
    sha256: str  # of manifest.json, which holds every other file's sha256
    steps_on_disk: frozenset[int]  # the job's checkpoints still on disk (the trainer prunes old ones)


def describe_checkpoint(store: ResultStore, path: Path) -> CheckpointFacts:
    files = [p for p in path.rglob("*") if p.is_file()]
    return CheckpointFacts(
        location=store.location_of(path),
        bytes=sum(p.stat().st_size for p in files),
        sha256=hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest(),
        steps_on_disk=frozenset(list_steps(path.parent)),
    )


def record_checkpoint(
    session: Session,
    *,
    job_id: str,
    step: int,
    kind: str,
    location: str,
    bytes: int,
    sha256: str,
    metrics: dict[str, Any],
) -> None:
    """Insert or replace (a resumed attempt may write the same step again)."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    values = {
        "job_id": job_id,
        "step": step,
        "kind": kind,
        "location": location,
        "bytes": bytes,
        "sha256": sha256,
        "metrics": metrics,
    }
    stmt = insert(Checkpoint).values(**values)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["job_id", "step"], set_={k: stmt.excluded[k] for k in values if k not in ("job_id", "step")}
        )
    )


def adopt_checkpoints(session: Session, store: ResultStore, *, job_id: str, total_steps: int) -> list[int]:
    """Rows for the job's complete checkpoints on disk that have none: an attempt killed between publishing a
    checkpoint (the rename) and recording it leaves one, and the next attempt resumes from it. The manifest is
    written last, so a published directory is whole. Returns the steps adopted."""
    root = store.job_dir(job_id) / "checkpoints"
    known = set(session.scalars(select(Checkpoint.step).where(Checkpoint.job_id == job_id)))
    adopted = []
    for step in list_steps(root):
        if step in known:
            continue
        path = root / f"step-{step}"
        facts = describe_checkpoint(store, path)
        manifest = json.loads((path / MANIFEST).read_text())
        record_checkpoint(
            session,
            job_id=job_id,
            step=step,
            kind="final" if step == total_steps else "periodic",
            location=facts.location,
            bytes=facts.bytes,
            sha256=facts.sha256,
            metrics=dict(manifest.get("metrics") or {}),
        )
        adopted.append(step)
    return adopted


def forget_checkpoints(session: Session, *, job_id: str, keep: frozenset[int] | set[int]) -> None:
    """Drop the rows of checkpoints the trainer pruned (keep_checkpoints): every step not in `keep`."""
    session.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.step.not_in(keep)))


def list_checkpoints(session: Session, *, job_id: str) -> list[Checkpoint]:
    return list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)))


def get_checkpoint(session: Session, *, job_id: str, step: int | None = None) -> Checkpoint:
    """The checkpoint at `step`, or the latest one."""
    q = select(Checkpoint).where(Checkpoint.job_id == job_id)
    q = q.where(Checkpoint.step == step) if step is not None else q.order_by(Checkpoint.step.desc()).limit(1)
    ckpt = session.scalar(q)
    if ckpt is None:
        raise NotFound("checkpoint", f"{job_id}@{'latest' if step is None else step}")
    return ckpt
