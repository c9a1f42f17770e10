"""Shared fixtures: real tiny transformers models built by the project (no downloads)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from rlad_core.models import save_tiny_model

# Two threads, as the machine has: keeps timings steady and the suite's runtime predictable.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def warm_spec(warm_dirs: dict[str, Path], **overrides: object) -> dict:
    """A short rlad job on the warm arithmetic models (the trainer's and the distributed tests' base)."""
    return {
        "method": "rlad",
        "student": str(warm_dirs["student"]),
        "teacher": str(warm_dirs["teacher"]),
        "task": {"name": "arithmetic", "levels": [1]},
        "steps": 3,
        "batch_size": 16,
        "group_size": 4,
        "max_new_tokens": 16,
        "lr": 1e-2,
        "eval_every": 0,
        "checkpoint_every": 0,
        "seed": 0,
        **overrides,
    }


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """Random-init tiny student and teacher ("mini", ~0.4M parameters) with the same character-level tokenizer."""
    root = tmp_path_factory.mktemp("tiny")
    return {
        "student": save_tiny_model(root / "student", "mini", seed=0),
        "teacher": save_tiny_model(root / "teacher", "mini", seed=1),
    }


@pytest.fixture(scope="session")
def warm_dirs(tmp_path_factory, tiny_dirs) -> dict[str, Path]:
    """Teacher and student briefly SFT-trained on the arithmetic task's reference solutions.

    The teacher gets three times the student's steps, so it is the stronger of the two; the student is
    right about a third of the time, so its rewards vary within a group (RL needs non-zero advantages).
    """
    from rlad_core.config import parse_config
    from rlad_core.trainer import train

    root = tmp_path_factory.mktemp("warm")
    out = {}
    for role, steps in (("teacher", 300), ("student", 100)):
        cfg = parse_config(
            {
                "method": "sft",
                "sft_source": "reference",
                "student": str(tiny_dirs[role]),
                "task": {"name": "arithmetic", "levels": [1]},
                "steps": steps,
                "batch_size": 32,
                "group_size": 4,
                "max_new_tokens": 24,
                "lr": 3e-3,
                "eval_every": 0,
                "checkpoint_every": 0,
                "seed": 0,
                "output_dir": str(root / role),
                "log_samples": 0,
            }
        )
        out[role] = train(cfg).checkpoint
    return out


@pytest.fixture(scope="session")
def smollm_dirs(tmp_path_factory) -> dict[str, Path]:
    """SmolLM2-135M-Instruct (teacher) and its every-6th-layer copy (student), built once from the offline
    package (rlad.smollm2); skips the test when the package is not installed."""
    from rlad.smollm2 import MISSING, build_models, package_dir

    if package_dir() is None:
        pytest.skip(MISSING)
    return build_models(tmp_path_factory.mktemp("smollm"))


@pytest.fixture()
def small_disk(tmp_path) -> Iterator[Callable[[int], Path]]:
    """Mounts a tmpfs of the given size in bytes (a real file system that fills up: ENOSPC) and returns its
    directory; unmounted after the test. Skips where mounting is not permitted (needs root / CAP_SYS_ADMIN)."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        if shutil.which("mount") is None:
            pytest.skip("no `mount` command: cannot make a small file system to fill")
        target = tmp_path / f"disk{len(mounted)}"
        target.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(
                f"mounting a tmpfs is not permitted here ({done.stderr.strip() or done.returncode}); "
                "the disk-full tests need root or CAP_SYS_ADMIN"
            )
        mounted.append(target)
        return target

    try:
        yield mount
    finally:
        for target in reversed(mounted):
            if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(target)], capture_output=True)  # still busy: detach it


def _fill_disk(path: Path, leave: int = 0) -> Path:
    ballast = path / "ballast"
    with open(ballast, "wb", buffering=0) as f:  # unbuffered: ENOSPC is raised by the write, not by close()
        chunk = b"\0" * (64 << 10)
        try:
            while (free := shutil.disk_usage(path).free) > leave:
                f.write(chunk[: min(len(chunk), free - leave)])
        except OSError:  # ENOSPC: full
            pass
    return ballast


@pytest.fixture()
def fill_disk() -> Callable[..., Path]:
    """`fill_disk(path, leave=0)`: write a ballast file into `path` until only `leave` bytes (rounded to the
    file system's block) are free, or the disk is full; returns the ballast file."""
    return _fill_disk
