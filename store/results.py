"""The result store: where checkpoints and uploaded datasets live.

Behind a small interface so an object store can be added; the default is a directory (`LocalResultStore`)
laid out as `jobs/<job id>/checkpoints/step-<n>/` and `datasets/<team id>/<sha256>.jsonl`. The trainer
writes a job's checkpoints straight into `job_dir(job_id)` (atomically: temp dir + rename, see
rlad_core.checkpoint), so publishing one is recording its location.
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
from typing import Protocol

from rlad_core.layout import MANIFEST, step_dir


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
