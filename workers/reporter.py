"""The Reporter the trainer process runs rlad_core with: metrics and sample rollouts in batches, events,
checkpoints recorded in the job store after they are complete on disk, progress for the ETA, and the stop
flag.

A database that is away (a restart) does not stop training: metrics, samples and events stay buffered and are
written, every step of them, once it answers again; the calls that must not be skipped (the job starting, a
checkpoint's row, `sync` before a checkpoint) wait for it."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlad_core.layout import MANIFEST, list_steps
from rlad_core.reporting import Reporter
from store import checkpoints as ckpt_store
from store import jobs as job_store
from store import metrics as metric_store
from store import samples as sample_store
from store import states
from store.db import is_unavailable, retry_unavailable, session_scope
from store.models import EventKind, Job
from store.results import ResultStore

log = logging.getLogger("rlad.trainer")


class JobReporter(Reporter):
    def __init__(self, job_id: str, attempt: int, total_steps: int, store: ResultStore, *, flush_s: float = 1.0):
        self.job_id, self.attempt, self.total_steps = job_id, attempt, total_steps
        self.store, self.flush_s = store, flush_s
        self.pending: list[tuple[int, dict[str, float]]] = []
        self.pending_samples: list[tuple[int, list[dict[str, Any]]]] = []
        self.pending_events: list[tuple[str, dict[str, Any]]] = []
        self.last_flush = time.monotonic()
        self.db_delay_s = 0.0  # while the database is away: the wait before the next write, doubling
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
            resumed_from = data.get("step") if kind == "resumed" else None

            def mark() -> None:
                with session_scope() as s:
                    job_store.mark_running(s, job_id=self.job_id, resumed_from_step=resumed_from)

            retry_unavailable(mark, what=f"job {self.job_id}: {kind}")
        elif kind in ("eval_completed", "step_skipped", "disk_full"):
            if kind == "disk_full":
                log.warning(
                    "job %s: checkpoint of step %s waits for disk space: %s bytes needed, %s free at %s",
                    self.job_id,
                    data.get("step"),
                    data.get("needed_bytes"),
                    data.get("free_bytes"),
                    data.get("path"),
                )
            self.pending_events.append((kind, dict(data)))  # after the metrics of its step, in one transaction
            self.flush()
        elif kind in ("finished", "stopped", "failed"):
            self.flush()

    def checkpoint(self, step: int, path: Path, metrics: Mapping[str, float]) -> None:
        self.sync()
        files = [p for p in path.rglob("*") if p.is_file()]
        location = self.store.location_of(path)
        on_disk = set(list_steps(path.parent))
        manifest_sha256 = hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest()
        if retry_unavailable(
            lambda: self._record_checkpoint(step, location, files, manifest_sha256, metrics, on_disk),
            what=f"job {self.job_id}: record checkpoint {step}",
        ):
            log.info("job %s: checkpoint step %d recorded", self.job_id, step)

    def _record_checkpoint(
        self,
        step: int,
        location: str,
        files: list[Path],
        manifest_sha256: str,
        metrics: Mapping[str, float],
        on_disk: set[int],
    ) -> bool:
        with session_scope() as s:
            if (job := self._held(s)) is None:
                return False
            ckpt_store.record_checkpoint(
                s,
                job_id=self.job_id,
                step=step,
                kind="final" if step == self.total_steps else "periodic",
                location=location,
                bytes=sum(p.stat().st_size for p in files),
                sha256=manifest_sha256,
                metrics=dict(metrics),
            )
            # keep_checkpoints: the trainer pruned older ones; forget their rows
            known = [c.step for c in ckpt_store.list_checkpoints(s, job_id=self.job_id)]
            ckpt_store.forget_checkpoints(s, job_id=self.job_id, steps=[k for k in known if k not in on_disk | {step}])
            states.add_event(s, job, EventKind.checkpoint_saved, step=step, location=location)
        return True

    def sync(self) -> None:
        """Everything reported so far is in the database (waits for it while it is away)."""
        retry_unavailable(self._write, what=f"job {self.job_id}: write metrics")

    def heartbeat(self, step: int) -> None:
        if (
            self.pending or self.pending_samples or self.pending_events
        ) and time.monotonic() - self.last_flush >= self.flush_s:
            self.flush()

    def should_stop(self) -> bool:
        return self.stop_requested

    def close(self) -> None:
        self.sync()

    # ----- plumbing -----------------------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        """SIGTERM handler: checkpoint and stop at the next step boundary."""
        self.stop_requested = True

    def _held(self, s: Any) -> Job | None:
        """The job, if this attempt still holds it (a re-queued job's old attempt must not write)."""
        job = s.get(Job, self.job_id)
        return job if job is not None and job.attempt == self.attempt and job.status in states.ACTIVE else None

    def flush(self) -> None:
        """Write what is buffered (while the database is away: at most every `db_delay_s`, doubling); a failed
        write keeps it all buffered for the next try."""
        if self.db_delay_s and time.monotonic() - self.last_flush < self.db_delay_s:
            return
        try:
            self._write()
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            if not self.db_delay_s:
                log.warning(
                    "job %s: the database is unavailable (%s); training goes on, metrics stay buffered",
                    self.job_id,
                    type(exc).__name__,
                )
            self.db_delay_s = min(max(2 * self.db_delay_s, 0.5), 10.0)
            return
        if self.db_delay_s:
            log.info("job %s: the database is back; buffered metrics written", self.job_id)
            self.db_delay_s = 0.0

    def _write(self) -> None:
        rows, samples, events = list(self.pending), list(self.pending_samples), list(self.pending_events)
        self.last_flush = time.monotonic()
        with session_scope() as s:
            if (job := self._held(s)) is not None:
                metric_store.write_metrics(s, job_id=self.job_id, rows=rows)
                for step, sample_rows in samples:
                    sample_store.write_samples(s, job_id=self.job_id, step=step, rows=sample_rows)
                for kind, data in events:
                    states.add_event(s, job, EventKind(kind), **data)
                job_store.record_progress(
                    s,
                    job_id=self.job_id,
                    attempt=self.attempt,
                    last_step=self.last_step,
                    seconds_per_step=self.seconds_per_step,
                )
        # committed (or no longer ours to write): what was taken is done; the trainer is single-threaded
        del self.pending[: len(rows)], self.pending_samples[: len(samples)], self.pending_events[: len(events)]
