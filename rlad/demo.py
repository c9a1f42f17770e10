"""`rlad demo`: a small, real RLAD job on CPU in a few minutes, through the embedded service.

1. Build a tiny teacher and student (~0.4M parameters each, Llama-family) with the project's
   character-level tokenizer (no downloads).
2. Warm both up with supervised fine-tuning on the arithmetic task's reference solutions (`method: sft`,
   `sft_source: reference`): the teacher three times longer, so it is strong; the student briefly, so it
   is weak but not hopeless (RL needs some correct samples to learn from).
3. Start the embedded service (API + worker, SQLite, no servers to install), submit an RLAD job over HTTP
   (TRRD, alpha 0.5: the student samples, the verifier rewards, the teacher scores the student's tokens
   inside the trust region), follow it, download its checkpoint (sha256-verified) and load it with
   `AutoModelForCausalLM.from_pretrained`.
Steps 1-2 are cached in the work directory, so a second run goes straight to step 3.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlad_core.checkpoint import latest_checkpoint
from rlad_core.config import TrainConfig
from rlad_core.models import save_tiny_model
from rlad_core.reporting import ConsoleReporter, JsonlReporter, MultiReporter
from rlad_core.trainer import TrainResult, train

TASK = {"name": "arithmetic", "levels": [1, 2]}
WARMUP = {"teacher": ("mini", 1, 600), "student": ("mini", 0, 300)}  # size, seed, SFT steps


def _train_logged(config: TrainConfig, *, quiet: bool, description: str) -> TrainResult:
    out = config.resolved_output_dir
    reporter = MultiReporter(ConsoleReporter(config.steps, description=description, quiet=quiet), JsonlReporter(out))
    try:
        return train(config, reporter=reporter)
    finally:
        reporter.close()


def warm_model(workdir: Path, role: str, *, quiet: bool, log: Callable[[str], Any]) -> Path:
    """A tiny model SFT-trained on reference solutions; cached under `workdir/<role>-sft`."""
    size, seed, steps = WARMUP[role]
    run_dir = workdir / f"{role}-sft"
    done = latest_checkpoint(run_dir / "checkpoints")
    if done is not None and done.name == f"step-{steps}":
        log(f"{role}: reusing {done}")
        return done
    init = save_tiny_model(workdir / f"{role}-init", size, seed=seed)
    log(f"{role}: warming up a tiny '{size}' model with {steps} SFT steps on reference solutions")
    config = TrainConfig(
        name=f"{role}-sft",
        method="sft",
        sft_source="reference",
        student=str(init),
        task=TASK,
        steps=steps,
        batch_size=64,
        group_size=8,
        max_new_tokens=24,
        lr=3e-3,
        warmup_steps=5,
        eval_every=0,
        checkpoint_every=0,
        log_samples=0,
        seed=seed,
        output_dir=str(run_dir),
    )
    return _train_logged(config, quiet=quiet, description=f"{role} warm-up").checkpoint


def demo_spec(teacher: Path, student: Path, steps: int) -> dict[str, Any]:
    """The RLAD job the demo submits (the JSON body of POST /v1/jobs)."""
    return {
        "name": "demo-rlad",
        "method": "rlad",
        "student": str(student.resolve()),
        "teacher": str(teacher.resolve()),
        "task": TASK,
        "steps": steps,
        "batch_size": 64,
        "group_size": 8,
        "max_new_tokens": 24,
        "lr": 3e-4,
        "alpha": 0.5,
        "eval_every": max(1, steps // 4),
        "eval_size": 64,
        "checkpoint_every": max(1, steps // 2),
        "seed": 0,
    }


def service_env(workdir: Path) -> dict[str, str]:
    """The demo's models live in `workdir`: the embedded service must let jobs read them by path
    (RLAD_MODEL_ROOTS, added to the caller's roots; the service's own data under it stays closed)."""
    roots = json.loads(os.environ.get("RLAD_MODEL_ROOTS") or "[]")
    return {"RLAD_MODEL_ROOTS": json.dumps([*roots, str(workdir.resolve())])}


def warm_models(workdir: Path, *, quiet: bool = False, log: Callable[[str], Any] = print) -> tuple[Path, Path]:
    """(teacher, student), warmed up and cached under `workdir`."""
    return (warm_model(workdir, "teacher", quiet=quiet, log=log), warm_model(workdir, "student", quiet=quiet, log=log))
