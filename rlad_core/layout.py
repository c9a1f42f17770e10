"""The checkpoint layout, in one place. Standard library only (no torch): the trainer writes it, and the
result store, the worker's reporter and the client (downloads) read it.

    <root>/step-<n>/        one checkpoint (a Hugging Face `save_pretrained` directory, plus trainer state)
        manifest.json       {"step", "created_at", "metrics", "files": {name: {"bytes", "sha256"}}}

A directory is replaced only by a rename (`replace_dir`), so `step-<n>` is always complete or absent.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
STEP_PREFIX = "step-"


class ManifestMismatch(ValueError):
    """A checkpoint directory does not match its manifest (or the manifest its published sha256)."""


def step_dir(root: str | Path, step: int) -> Path:
    """`<root>/step-<step>`."""
    return Path(root) / f"{STEP_PREFIX}{step}"


def step_of(path: str | Path) -> int | None:
    """The step of a `step-<n>` directory name, else None."""
    name = Path(path).name
    digits = name.removeprefix(STEP_PREFIX)
    return int(digits) if name.startswith(STEP_PREFIX) and digits.isdigit() else None


def list_steps(root: str | Path) -> list[int]:
    """The steps of the complete checkpoints under `root` (a manifest present), ascending; temporary
    directories are ignored."""
    root = Path(root)
    if not root.is_dir():
        return []
    steps = [s for p in root.iterdir() if (s := step_of(p)) is not None and p.is_dir() and (p / MANIFEST).is_file()]
    return sorted(steps)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify(path: str | Path, *, manifest_sha256: str | None = None) -> dict[str, Any]:
    """Check every file of a checkpoint against its manifest (size and sha256) and, when given, the manifest
    itself against `manifest_sha256` (the checkpoint's `sha256` in the API). Returns the manifest; raises
    `ManifestMismatch` naming the first file that does not match."""
    root = Path(path)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise ManifestMismatch(f"{root} has no {MANIFEST}; it is not a complete checkpoint")
    raw = manifest_path.read_bytes()
    if manifest_sha256 is not None and hashlib.sha256(raw).hexdigest() != manifest_sha256:
        raise ManifestMismatch(
            f"{manifest_path}: sha256 does not match the checkpoint's published sha256 {manifest_sha256}"
        )
    try:
        manifest = json.loads(raw)
        expected = {str(name): (int(info["bytes"]), str(info["sha256"])) for name, info in manifest["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ManifestMismatch(f"{manifest_path} is not a valid manifest: {exc}") from None
    for name, (size, digest) in sorted(expected.items()):
        f = root / name
        if not f.is_file():
            raise ManifestMismatch(f"{root}: {name} is missing (listed in {MANIFEST})")
        if f.stat().st_size != size:
            raise ManifestMismatch(f"{root}: {name} has {f.stat().st_size} bytes, the manifest says {size}")
        actual = sha256_file(f)
        if actual != digest:
            raise ManifestMismatch(f"{root}: {name} sha256 {actual} does not match the manifest's {digest}")
    return dict(manifest)


def replace_dir(src: Path, dst: Path) -> None:
    """Move the complete directory `src` to `dst` by renames only (same file system), replacing an existing
    `dst`: the old one is moved aside first, so `dst` is never a half-written directory."""
    if dst.exists():
        old = dst.with_name(f".old-{dst.name}-{uuid.uuid4().hex[:8]}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
