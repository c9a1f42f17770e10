"""The Reporter the trainer process runs rlad_core with: metrics and sample rollouts in batches, events,
checkpoints recorded in the job store after they are complete on disk, progress for the ETA, and the stop
flag."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlad_core.checkpoint import MANIFEST, list_checkpoints
from rlad_core.reporting import Reporter
from store import checkpoints as ckpt_store
from store import jobs as job_store
from store import metrics as metric_store
from store import samples as sample_store
from store import states
from store.db import session_scope
from store.models import EventKind, Job
from store.results import ResultStore

log = logging.getLogger("rlad.trainer")


class JobReporter(Reporter):
    def __init__(self, job_id: str, attempt: int, total_steps: int, store: ResultStore, *, flush_s: float = 1.0):
        self.job_id, self.attempt, self.total_steps = job_id, attempt, total_steps
        self.store, self.flush_s = store, flush_s
        self.pending: list[tuple[int, dict[str, float]]] = []
        self.pending_samples: list[tuple[int, list[dict[str, Any]]]] = []
        self.last_flush = time.monotonic()
        self.last_step = 0
        self.seconds_per_step: float | None = None
        self.stop_requested = False

    # ----- the trainer's calls --------------------------------------------------------------------------
    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        self.pending.append((step, dict(values)))
        if "time/step" in values:
            t = float(values["time/step"])
            # exponential average: the ETA follows the recent pace, not the slow first steps
            self.seconds_per_step = t if self.seconds_per_step is None else 0.8 * self.seconds_per_step + 0.2 * t
            self.last_step = max(self.last_step, step)
        if time.monotonic() - self.last_flush >= self.flush_s:
            self.flush()

    def samples(self, step: int, rows: Sequence[Mapping[str, Any]]) -> None:
        self.pending_samples.append((step, [dict(r) for r in rows]))  # written with the next metrics flush

    def event(self, kind: str, **data: Any) -> None:
        if kind in ("started", "resumed"):
            self.last_step = data.get("step", 0)
            with session_scope() as s:
                job_store.mark_running(s, job_id=self.job_id,
                                       resumed_from_step=data.get("step") if kind == "resumed" else None)
        elif kind in ("eval_completed", "step_skipped"):
            self.flush()
            with session_scope() as s:
                if (job := self._held(s)) is not None:
                    states.add_event(s, job, EventKind(kind), **data)
        elif kind in ("finished", "stopped", "failed"):
            self.flush()

    def checkpoint(self, step: int, path: Path, metrics: Mapping[str, float]) -> None:
        self.flush()
        files = [p for p in path.rglob("*") if p.is_file()]
        location = self.store.checkpoint_location(self.job_id, step)
        on_disk = {int(p.name.removeprefix("step-")) for p in list_checkpoints(path.parent)}
        with session_scope() as s:
            if (job := self._held(s)) is None:
                return
            ckpt_store.record_checkpoint(
                s, job_id=self.job_id, step=step, kind="final" if step == self.total_steps else "periodic",
                location=location, bytes=sum(p.stat().st_size for p in files),
                sha256=hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest(), metrics=dict(metrics))
            # keep_checkpoints: the trainer pruned older ones; forget their rows
            known = [c.step for c in ckpt_store.list_checkpoints(s, job_id=self.job_id)]
            ckpt_store.forget_checkpoints(s, job_id=self.job_id, steps=[k for k in known if k not in on_disk | {step}])
            states.add_event(s, job, EventKind.checkpoint_saved, step=step, location=location)
        log.info("job %s: checkpoint step %d recorded", self.job_id, step)

    def sync(self) -> None:
        self.flush()

    def heartbeat(self, step: int) -> None:
        if (self.pending or self.pending_samples) and time.monotonic() - self.last_flush >= self.flush_s:
            self.flush()

    def should_stop(self) -> bool:
        return self.stop_requested

    def close(self) -> None:
        self.flush()

    # ----- plumbing -----------------------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        """SIGTERM handler: checkpoint and stop at the next step boundary."""
        self.stop_requested = True

    def _held(self, s: Any) -> Job | None:
        """The job, if this attempt still holds it (a re-queued job's old attempt must not write)."""
        job = s.get(Job, self.job_id)
        return job if job is not None and job.attempt == self.attempt and job.status in states.ACTIVE else None

    def flush(self) -> None:
        rows, self.pending = self.pending, []
        samples, self.pending_samples = self.pending_samples, []
        self.last_flush = time.monotonic()
        with session_scope() as s:
            if self._held(s) is None:
                return
            metric_store.write_metrics(s, job_id=self.job_id, rows=rows)
            for step, sample_rows in samples:
                sample_store.write_samples(s, job_id=self.job_id, step=step, rows=sample_rows)
            job_store.record_progress(s, job_id=self.job_id, attempt=self.attempt, last_step=self.last_step,
                                      seconds_per_step=self.seconds_per_step)
