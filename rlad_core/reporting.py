"""How a run talks to the outside world: the Reporter interface and the local reporters.

The trainer calls a Reporter and nothing else; the service's workers implement one that writes to the
job store, the CLI uses `ConsoleReporter` (progress bar + metrics.jsonl), tests use `MemoryReporter`.
rlad_core imports no service code: this interface is the seam.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


class Reporter:
    """Receives a run's metrics, events, checkpoints and heartbeats; can ask the run to stop.

    Every method has a do-nothing default so a reporter overrides only what it needs.
    """

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        """Metrics of one training step (or an evaluation, keys prefixed with `eval/`)."""

    def event(self, kind: str, **data: Any) -> None:
        """A lifecycle event: started, resumed, eval_completed, checkpoint_saved, step_skipped, disk_full (a
        checkpoint waits for space: needed_bytes, free_bytes, path), stopped, finished, failed."""

    def checkpoint(self, step: int, path: Path, metrics: Mapping[str, float]) -> None:
        """A checkpoint was written completely (atomically) at `path`."""

    def sync(self) -> None:
        """Make everything reported so far durable. Called just before a checkpoint is written: a run that
        dies after the write resumes from it, so the metrics of the steps it covers must not be lost."""

    def samples(self, step: int, rows: Sequence[Mapping[str, Any]]) -> None:
        """A few rollouts of the step ({"prompt", "completion", "reward", "correct"}) for people to read."""

    def heartbeat(self, step: int) -> None:
        """Called often (at least once per step) to show the run is alive."""

    def should_stop(self) -> bool:
        """Return True to ask the run to checkpoint and stop at the next step boundary."""
        return False

    def close(self) -> None:
        """The run is over (finished, stopped or failed)."""


class MultiReporter(Reporter):
    """Fan out to several reporters; stops when any of them asks to."""

    def __init__(self, *reporters: Reporter):
        self.reporters = [r for r in reporters if r is not None]

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        for r in self.reporters:
            r.metrics(step, values)

    def event(self, kind: str, **data: Any) -> None:
        for r in self.reporters:
            r.event(kind, **data)

    def checkpoint(self, step: int, path: Path, metrics: Mapping[str, float]) -> None:
        for r in self.reporters:
            r.checkpoint(step, path, metrics)

    def samples(self, step: int, rows: Sequence[Mapping[str, Any]]) -> None:
        for r in self.reporters:
            r.samples(step, rows)

    def sync(self) -> None:
        for r in self.reporters:
            r.sync()

    def heartbeat(self, step: int) -> None:
        for r in self.reporters:
            r.heartbeat(step)

    def should_stop(self) -> bool:
        return any(r.should_stop() for r in self.reporters)

    def close(self) -> None:
        for r in self.reporters:
            r.close()


class MemoryReporter(Reporter):
    """Keeps everything in lists (tests, notebooks)."""

    def __init__(self, stop_after_step: int | None = None):
        self.metric_rows: list[tuple[int, dict[str, float]]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.checkpoints: list[tuple[int, Path]] = []
        self.sample_rows: list[tuple[int, list[Mapping[str, Any]]]] = []
        self.heartbeats = 0
        self.stop_after_step = stop_after_step
        self._last_step = -1

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        self.metric_rows.append((step, dict(values)))
        self._last_step = max(self._last_step, step)

    def event(self, kind: str, **data: Any) -> None:
        self.events.append((kind, data))

    def checkpoint(self, step: int, path: Path, metrics: Mapping[str, float]) -> None:
        self.checkpoints.append((step, path))

    def samples(self, step: int, rows: Sequence[Mapping[str, Any]]) -> None:
        self.sample_rows.append((step, list(rows)))

    def heartbeat(self, step: int) -> None:
        self.heartbeats += 1

    def should_stop(self) -> bool:
        return self.stop_after_step is not None and self._last_step >= self.stop_after_step

    def train_metrics(self) -> dict[int, dict[str, float]]:
        """Step -> training metrics (evaluation rows excluded)."""
        return {s: v for s, v in self.metric_rows if not any(k.startswith("eval/") for k in v)}


def _json_safe(values: Mapping[str, float]) -> dict[str, float | None]:
    # JSON has no NaN/inf; a skipped step's non-finite loss is written as null
    return {k: (v if isinstance(v, int | float) and math.isfinite(v) else None) for k, v in values.items()}


class JsonlReporter(Reporter):
    """Appends metrics to `metrics.jsonl`, events to `events.jsonl` and samples to `samples.jsonl` in a run
    directory."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def _append(self, name: str, row: Mapping[str, Any]) -> None:
        with open(self.run_dir / name, "a") as f:
            f.write(json.dumps(row) + "\n")

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        self._append("metrics.jsonl", {"step": step, "time": time.time(), **_json_safe(values)})

    def event(self, kind: str, **data: Any) -> None:
        self._append("events.jsonl", {"kind": kind, "time": time.time(), **data})

    def samples(self, step: int, rows: Sequence[Mapping[str, Any]]) -> None:
        for row in rows:
            self._append("samples.jsonl", {"step": step, **row})


class ConsoleReporter(Reporter):
    """A rich progress bar (step/total, reward, accuracy, ETA) and one line per event."""

    def __init__(self, total_steps: int, *, description: str = "training", quiet: bool = False):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=True, quiet=quiet)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("reward {task.fields[reward]}"),
            TextColumn("acc {task.fields[acc]}"),
            TextColumn("eval {task.fields[eval]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.task_id = self.progress.add_task(description, total=total_steps, reward="-", acc="-", eval="-")
        self.progress.start()

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        if "eval/accuracy" in values:
            self.progress.update(self.task_id, eval=f"{values['eval/accuracy']:.3f}")
            return
        fields: dict[str, str] = {}
        if "reward_mean" in values:
            fields["reward"] = f"{values['reward_mean']:+.3f}"
        if "accuracy" in values:
            fields["acc"] = f"{values['accuracy']:.3f}"
        self.progress.update(self.task_id, completed=step, **fields)

    def event(self, kind: str, **data: Any) -> None:
        if kind in ("started", "resumed", "checkpoint_saved", "step_skipped", "disk_full", "stopped", "failed"):
            detail = ", ".join(f"{k}={v}" for k, v in data.items() if k not in ("config",))
            self.progress.console.log(f"{kind}: {detail}")

    def close(self) -> None:
        self.progress.stop()
