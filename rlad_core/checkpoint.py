"""Atomic checkpoints: a Hugging Face directory (safetensors + tokenizer) plus the trainer state and a manifest.

Layout of `<root>/step-<n>/`:
    config.json, generation_config.json, model.safetensors, tokenizer files   (loads with from_pretrained)
    trainer_state.pt     optimizer, LR scheduler, RNG states, step, data position, job config
    manifest.json        step, created time, metrics snapshot and the sha256 and size of every file

A checkpoint is written into a hidden temporary directory next to its final place and renamed into place
only once every file is flushed, so a crash leaves either the complete checkpoint or none: a directory
named `step-<n>` always holds a manifest that matches its files.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.pt"
_PREFIX = "step-"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match its manifest."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    root: str | Path,
    step: int,
    *,
    model: Any,
    tokenizer: Any,
    trainer_state: Mapping[str, Any],
    metrics: Mapping[str, float] | None = None,
) -> Path:
    """Write `<root>/step-<step>/` atomically and return its path. An existing one for the step is replaced."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_PREFIX}{step}"
    tmp = root / f".tmp-{_PREFIX}{step}-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        torch.save(dict(trainer_state), tmp / TRAINER_STATE)
        files = {}
        for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
            files[str(f.relative_to(tmp))] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
        manifest = {"step": step, "created_at": time.time(), "metrics": dict(metrics or {}), "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        _fsync_dir(tmp)
        if final.exists():
            # replace: move the old one aside first so that `final` is never a half-written directory
            old = root / f".old-{_PREFIX}{step}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_manifest(path: str | Path) -> dict[str, Any]:
    p = Path(path) / MANIFEST
    if not p.is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {MANIFEST})")
    return json.loads(p.read_text())


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check every file against the manifest's sha256; return the manifest or raise `CheckpointError`."""
    path = Path(path)
    manifest = read_manifest(path)
    for name, info in manifest["files"].items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path} is missing {name}")
        if sha256_file(f) != info["sha256"]:
            raise CheckpointError(f"checkpoint {path}: {name} does not match its sha256 in the manifest")
    return manifest


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest step first (temporary directories are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(_PREFIX) and p.name[len(_PREFIX):].isdigit() and (p / MANIFEST).is_file():
            found.append(p)
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX):]))


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def prune_checkpoints(root: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    for p in list_checkpoints(root)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    """Verify the checkpoint and return its trainer state (optimizer, scheduler, RNG, step, data position)."""
    verify_checkpoint(path)
    # weights_only=False: the state holds Python RNG tuples; checkpoints are written by this trainer
    return torch.load(Path(path) / TRAINER_STATE, map_location="cpu", weights_only=False)
