"""Atomic checkpoints: a Hugging Face directory (safetensors + tokenizer) plus the trainer state and a manifest.

Layout of `<root>/step-<n>/`:
    config.json, generation_config.json, model.safetensors, tokenizer files   (loads with from_pretrained)
    trainer_state.pt     optimizer, LR scheduler, RNG states, step, data position, job config
    optimizer/           (FSDP runs) the optimizer state instead, each process's shards written by it with
                         torch.distributed.checkpoint (DCP); loads resharded on any number of processes
    (LoRA students)      adapter_config.json + adapter_model.safetensors instead of the full weights (loads with
                         from_pretrained, peft installed), and with merge_lora_on_save merged/: a plain model
    manifest.json        step, created time, metrics snapshot and the sha256 and size of every file

A checkpoint is written into a hidden temporary directory next to its final place and renamed into place
only once every file is flushed, so a crash leaves either the complete checkpoint or none: a directory
named `step-<n>` always holds a manifest that matches its files.

Disk space is checked before a write (`estimate_checkpoint_bytes` + a reserve against the free space of the
target directory), and a write that runs out of space anyway is undone; both raise `DiskFull`, which leaves
every earlier checkpoint as it was, so the caller can wait for space and save again.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from rlad_core.layout import (
    MANIFEST,
    TRAINER_STATE,
    ManifestMismatch,
    list_steps,
    replace_dir,
    sha256_file,
    step_dir,
    verify,
)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match its manifest."""


class DiskFull(OSError):
    """Not enough free space to write a checkpoint: `needed` bytes (the estimated checkpoint plus the reserve),
    `free` bytes free on the file system of `path`. Nothing was written; earlier checkpoints are intact."""

    waited_s: float | None = None  # set by a caller that waited this long for space before giving up

    def __init__(self, needed: int, free: int, path: str | Path):
        self.needed, self.free, self.path = int(needed), int(free), str(path)
        super().__init__(errno.ENOSPC, f"disk full: {self.needed} bytes needed, {self.free} free at {self.path}")

    def __str__(self) -> str:
        if self.waited_s is None:
            return self.strerror
        return f"{self.strerror} (waited {self.waited_s:.0f} s for space)"

    def __reduce__(self) -> tuple[Any, ...]:  # OSError pickles its (errno, strerror) args, not ours
        return DiskFull, (self.needed, self.free, self.path)


# Added to every estimate: the tokenizer files, config, manifest and pickled RNG state that the tensor
# count misses, and file-system block rounding. An estimate that is still short shows as ENOSPC during the
# write, which is undone and raised as `DiskFull` too.
MARGIN_FRACTION = 0.1
MARGIN_BYTES = 1 << 20


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors inside nested dicts/lists/tuples (an optimizer's state_dict); of a DTensor, this
    process's shard."""
    if isinstance(obj, torch.Tensor):
        local = obj.to_local() if hasattr(obj, "to_local") else obj
        return local.numel() * local.element_size()
    if isinstance(obj, Mapping):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def estimate_checkpoint_bytes(root: str | Path, *, model: Any, trainer_state: Mapping[str, Any]) -> int:
    """Bytes the next checkpoint under `root` will take: the size of the newest existing one (a run's
    checkpoints are alike), else parameters x element size (the weights) + the tensors of the trainer state
    (AdamW's two moments: twice the weights); plus `MARGIN_FRACTION` and `MARGIN_BYTES`."""
    newest = latest_checkpoint(root)
    if newest is not None:
        base = sum(p.stat().st_size for p in newest.rglob("*") if p.is_file())
    else:  # parameters() yields tied weights once, as save_pretrained writes them
        base = sum(p.numel() * p.element_size() for p in model.parameters()) + tensor_bytes(trainer_state)
    return int(base * (1 + MARGIN_FRACTION)) + MARGIN_BYTES


def is_out_of_space(exc: BaseException) -> bool:
    """Whether a failed write ran out of disk space (or quota): an OSError with ENOSPC/EDQUOT; safetensors'
    error, which carries only the OS message; or torch's RuntimeError from its zip writer (inline_container.cc),
    which loses the errno and reports the short write as "unexpected pos ..." or "file write failed"."""
    if isinstance(exc, DiskFull):
        return True
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(exc)
    if "No space left on device" in text or "Disk quota exceeded" in text:
        return True
    return (
        isinstance(exc, RuntimeError)
        and "inline_container" in text
        and ("unexpected pos" in text or "write failed" in text)
    )


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
    reserve_bytes: int = 0,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    write_extra: Callable[[Path], None] | None = None,
    extra_bytes: int = 0,
) -> Path:
    """Write `<root>/step-<step>/` atomically and return its path. An existing one for the step is replaced.
    `state_dict`: the model's weights when `model` does not hold them whole (gathered from FSDP shards).
    `write_extra(tmp)`: first, writes more files into the temporary directory, `extra_bytes` in all: what every
    process of a sharded run holds (the optimizer state with torch.distributed.checkpoint, `layout.SHARDED_OPTIMIZER`),
    or a LoRA student's merged weights (`layout.MERGED`); the manifest then covers those files too.

    Raises `DiskFull` without writing anything when the file system of `root` has less free space than the
    estimated checkpoint (`estimate_checkpoint_bytes`) plus `reserve_bytes`, and also when the write itself
    runs out of space (the temporary directory is removed first). Earlier checkpoints are never touched."""
    root = Path(root)
    needed = estimate_checkpoint_bytes(root, model=model, trainer_state=trainer_state) + reserve_bytes
    needed += 0 if latest_checkpoint(root) else extra_bytes  # (an existing checkpoint's size includes them)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if is_out_of_space(exc):  # named after a directory that exists: the caller polls its free space
            parent = _existing_parent(root)
            raise DiskFull(needed, shutil.disk_usage(parent).free, parent) from exc
        raise
    free_before = shutil.disk_usage(root).free
    if free_before < needed:
        raise DiskFull(needed, free_before, root)

    final = step_dir(root, step)
    tmp = root / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        if write_extra is not None:
            tmp.mkdir()
            write_extra(tmp)
        model.save_pretrained(tmp, safe_serialization=True, state_dict=dict(state_dict) if state_dict else None)
        tokenizer.save_pretrained(tmp)
        # through a Python file: a full disk then shows as ENOSPC or as the zip writer's "unexpected pos"
        # (seen on tmpfs, torch 2.13); torch's own file writer may say only "basic_ios::clear: iostream error"
        with open(tmp / TRAINER_STATE, "wb") as fh:
            torch.save(dict(trainer_state), fh)
        files = {}
        for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
            files[str(f.relative_to(tmp))] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
        manifest = {"step": step, "created_at": time.time(), "metrics": dict(metrics or {}), "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        _fsync_dir(tmp)
        replace_dir(tmp, final)
        _fsync_dir(root)
    except BaseException as exc:
        full = isinstance(exc, Exception) and is_out_of_space(exc)
        # what the write had used when it ran out is a lower bound of what it needs (the estimate fell short)
        used = free_before - shutil.disk_usage(root).free if full else 0
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise DiskFull(
                max(needed, used + MARGIN_BYTES + reserve_bytes), shutil.disk_usage(root).free, root
            ) from exc
        raise
    return final


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    p = Path(path) / MANIFEST
    if not p.is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {MANIFEST})")
    return json.loads(p.read_text())


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check every file against the manifest (size and sha256); return the manifest or raise `CheckpointError`."""
    try:
        return verify(path)
    except ManifestMismatch as exc:
        raise CheckpointError(str(exc)) from None


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest step first (temporary directories are ignored)."""
    return [step_dir(root, step) for step in list_steps(root)]


def remove_temporaries(root: str | Path) -> list[Path]:
    """Delete the directories under `root` that a writer left when it was killed mid-checkpoint: the one it was
    writing (`.tmp-step-<n>-<hex>`) and one it had moved aside to replace (`.old-step-<n>-<hex>`,
    `layout.replace_dir`); call it only while nothing writes there (before a run starts). Returns them."""
    root = Path(root)
    found = sorted(p for p in [*root.glob(".tmp-*"), *root.glob(".old-*")] if p.is_dir()) if root.is_dir() else []
    for p in found:
        shutil.rmtree(p, ignore_errors=True)
    return found


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
