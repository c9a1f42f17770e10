"""Shared fixtures: real tiny transformers models built by the project (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from rlad_core.models import save_tiny_model

# Two threads, as the machine has: keeps timings steady and the suite's runtime predictable.
torch.set_num_threads(min(2, os.cpu_count() or 1))


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
        cfg = parse_config({
            "method": "sft", "sft_source": "reference", "student": str(tiny_dirs[role]),
            "task": {"name": "arithmetic", "levels": [1]}, "steps": steps, "batch_size": 32, "group_size": 4,
            "max_new_tokens": 24, "lr": 3e-3, "eval_every": 0, "checkpoint_every": 0, "seed": 0,
            "output_dir": str(root / role), "log_samples": 0,
        })
        out[role] = train(cfg).checkpoint
    return out
