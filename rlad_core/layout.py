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
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, get_args

MANIFEST = "manifest.json"
STEP_PREFIX = "step-"
TRAINER_STATE = "trainer_state.pt"  # optimizer, LR scheduler, RNG states, step, data position, job config
SHARDED_OPTIMIZER = "optimizer"  # a sharded run's optimizer state: a torch.distributed.checkpoint directory
MERGED = "merged"  # a LoRA student's weights with the adapters merged in (merge_lora_on_save): a plain HF model
ADAPTER_CONFIG = "adapter_config.json"  # a LoRA student's checkpoint holds its adapter (peft) at the top

# What a download can hold (`part`):
#   all      every file: resumes a run (trainer state, optimizer shards) and, for LoRA, the merged weights
#   model    the loadable model only: the weights (a LoRA student's adapter), config and tokenizer files
#   adapter  the same as model, for a LoRA student only (refused for a student trained in full)
#   merged   a LoRA student's merged weights (merge_lora_on_save), laid out at the top: a plain HF model
Part = Literal["all", "model", "adapter", "merged"]
PARTS: tuple[str, ...] = get_args(Part)


class PartMissing(LookupError):
    """The checkpoint has no such part (an adapter of a fully trained student, merged weights not saved)."""


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


def _trainer_only(name: str) -> bool:
    return name == TRAINER_STATE or name.startswith((f"{SHARDED_OPTIMIZER}/", f"{MERGED}/"))


def part_files(names: Iterable[str], part: str) -> dict[str, str]:
    """The files of a checkpoint's `part` (see PARTS): {name in the download: name in the checkpoint}, given
    the names its manifest lists. The manifest itself goes with every part, so a downloaded part verifies
    against the checkpoint's published sha256. Raises `PartMissing` (with the fix) when the checkpoint has no
    such part, ValueError for an unknown part."""
    names = set(names)
    if part == "all":
        chosen = {n: n for n in names}
    elif part in ("model", "adapter"):
        if part == "adapter" and ADAPTER_CONFIG not in names:
            raise PartMissing(
                "this checkpoint has no LoRA adapter (the student was trained in full); "
                "fix: download part 'model' or 'all'"
            )
        chosen = {n: n for n in names if not _trainer_only(n)}
    elif part == "merged":
        chosen = {n.removeprefix(f"{MERGED}/"): n for n in names if n.startswith(f"{MERGED}/")}
        if not chosen:
            raise PartMissing(
                "this checkpoint has no merged weights (only LoRA runs with merge_lora_on_save: true save them); "
                "fix: download part 'model' (the adapter, or the full weights) or 'all'"
            )
    else:
        raise ValueError(f"unknown checkpoint part {part!r}; use one of {', '.join(PARTS)}")
    return {**chosen, MANIFEST: MANIFEST}


def download_name(job_id: str, step: int, part: str = "all") -> str:
    """The directory a downloaded checkpoint unpacks to: `<job>-step-<n>`, `<job>-step-<n>-<part>` for a part."""
    return f"{job_id}-step-{step}" + ("" if part == "all" else f"-{part}")


def verify(path: str | Path, *, manifest_sha256: str | None = None, part: str = "all") -> dict[str, Any]:
    """Check every file of a checkpoint (or of the downloaded `part` of one, see `part_files`) against its
    manifest (size and sha256) and, when given, the manifest itself against `manifest_sha256` (the
    checkpoint's `sha256` in the API). Returns the manifest; raises `ManifestMismatch` naming the first file
    that does not match."""
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
    try:
        here = {local: src for local, src in part_files(expected, part).items() if src != MANIFEST}
    except PartMissing as exc:
        raise ManifestMismatch(f"{root}: {exc}") from None
    for local, name in sorted(here.items()):
        size, digest = expected[name]
        f = root / local
        if not f.is_file():
            raise ManifestMismatch(f"{root}: {local} is missing (listed in {MANIFEST} as {name})")
        if f.stat().st_size != size:
            raise ManifestMismatch(f"{root}: {local} has {f.stat().st_size} bytes, the manifest says {size}")
        actual = sha256_file(f)
        if actual != digest:
            raise ManifestMismatch(f"{root}: {local} sha256 {actual} does not match the manifest's {digest}")
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
