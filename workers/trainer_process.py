"""The trainer process: `python -m workers.trainer_process JOB_ID ATTEMPT`, started by the supervisor.

Loads the job's resolved spec, points its output at the result store, resumes from the job's last
checkpoint if there is one, runs rlad_core with a `JobReporter` (below: how the run reaches the job store),
and records how the run ended. SIGTERM asks for a final checkpoint and a clean stop (cancel)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlad_core.checkpoint import DiskFull, remove_temporaries
from rlad_core.config import ConfigError, parse_config
from rlad_core.distributed import close_world, peer_lost, world_size_from_env
from rlad_core.models import TokenizerMismatch
from rlad_core.reporting import Reporter
from rlad_core.tasks.jsonl import DatasetError
from rlad_core.trainer import NonFiniteError, train
from store import jobs as job_store
from store import metrics as metric_store
from store import refs, results, states
from store import samples as sample_store
from store.db import is_unavailable, retry_unavailable, session_scope
from store.models import EventKind, Job, JobStatus
from store.results import ResultStore, get_result_store
from store.settings import get_settings
from workers.process_group import die_with_parent

log = logging.getLogger("rlad.trainer")
S = JobStatus

# error code for exceptions that retrying cannot fix
ERROR_CODES: list[tuple[type[BaseException], str]] = [
    (ConfigError, "invalid_spec"),
    (DatasetError, "invalid_dataset"),
    (TokenizerMismatch, "tokenizer_mismatch"),
    (FileNotFoundError, "not_found"),
    (NonFiniteError, "non_finite"),
    (MemoryError, "out_of_memory"),
    (DiskFull, "disk_full"),
]


def error_code(exc: BaseException) -> str:
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
        return "out_of_memory"
    return next((code for cls, code in ERROR_CODES if isinstance(exc, cls)), "training_failed")


def run(job_id: str, attempt: int) -> int:
    """One process of the job's attempt: the only one, or one rank of its torchrun process group (rank 0
    reports through a `JobReporter` and records how the run ended; the other ranks train silently)."""
    settings = get_settings()
    store = get_result_store(settings.resolved_result_root)
    rank, world_size = int(os.environ.get("RANK", "0")), world_size_from_env()

    def load() -> tuple[Job, dict[str, Any]]:
        with session_scope() as s:
            job = job_store.get_job(s, team_id=None, job_id=job_id)
            return job, dict(job.spec_resolved)

    job, spec = retry_unavailable(load, what=f"job {job_id}: load")
    if job.attempt != attempt or job.status not in (S.starting, S.running, S.cancelling, S.pausing):
        log.info("job %s: attempt %d does not hold the job (%s); exiting", job_id, attempt, job.status.value)
        return 0
    team_id = job.team_id
    spec["output_dir"] = str(store.job_dir(job_id))

    if rank == 0:
        _adopt_leftovers(job_id, store, int(spec["steps"]))

    reporter: JobReporter | RankReporter
    if rank == 0:
        reporter = JobReporter(job_id, attempt, spec["steps"], store, flush_s=settings.metrics_flush_s)
    else:
        reporter = RankReporter()
    signal.signal(signal.SIGTERM, reporter.request_stop)  # every rank: a stop asked of any process stops all
    try:
        with session_scope() as s:  # refs -> local paths (store.refs: checked again, HF ids offline)
            spec = refs.localize_refs(s, team_id=team_id, spec=spec, store=store, settings=settings)
        config = parse_config(spec)
        result = train(
            config,
            reporter=reporter,
            resume_from="auto",
            disk_reserve_bytes=settings.disk_reserve_bytes,
            disk_poll_s=settings.disk_full_poll_s,
            disk_full_wait_s=settings.disk_full_wait_s,
        )  # a full result store pauses the job (disk_full), then fails it (error code disk_full)
    except BaseException as exc:
        reporter.close()
        close_world(together=False)
        if world_size > 1 and (peer_lost(exc) or reporter.stop_requested):
            # another process of the group is gone (or torchrun is ending the group): the attempt is lost, not
            # failed; the supervisor records it and the job resumes from its last checkpoint
            log.warning("job %s: rank %d: the process group broke up (%s: %s)", job_id, rank, type(exc).__name__, exc)
            return PEER_LOST_EXIT
        code = error_code(exc)
        log.error("job %s: rank %d failed (%s): %s\n%s", job_id, rank, code, exc, traceback.format_exc())
        _finish(job_id, attempt, S.failed, error_code=code, error_message=f"{type(exc).__name__}: {exc}"[:4000])
        return 1
    reporter.close()
    if rank != 0:
        close_world()  # after rank 0 recorded the end: a node whose processes exit 0 finds it recorded
        return 0
    asked = _status(job_id) if result.stopped else None
    if result.stopped and asked not in (S.cancelling, S.pausing):
        # stopped by a worker that is shutting down: its supervisor releases the job to the queue
        log.info("job %s: stopped at step %d for a worker shutdown", job_id, result.step)
        close_world()
        return 0
    outcome = S.succeeded if not result.stopped else S.paused if asked == S.pausing else S.cancelled
    _finish(job_id, attempt, outcome, step=result.step, checkpoint_step=result.step if result.checkpoint else None)
    log.info("job %s: %s at step %d", job_id, outcome.value, result.step)
    close_world()
    return 0


def _status(job_id: str) -> S:
    def read() -> S:
        with session_scope() as s:
            return job_store.status_of(s, job_id=job_id)

    return retry_unavailable(read, what=f"job {job_id}: status")


def _adopt_leftovers(job_id: str, store: ResultStore, total_steps: int) -> None:
    """What an earlier attempt killed mid-checkpoint left in the job's folder: its temporary directory is
    removed, and a checkpoint it published but did not record gets its row (this attempt resumes from it)."""
    for tmp in remove_temporaries(store.job_dir(job_id) / "checkpoints"):
        log.warning("job %s: removed %s, left by an attempt killed while writing it", job_id, tmp.name)

    def adopt() -> list[int]:
        with session_scope() as s:
            return results.adopt_checkpoints(s, store, job_id=job_id, total_steps=total_steps)

    for step in retry_unavailable(adopt, what=f"job {job_id}: adopt checkpoints"):
        log.warning(
            "job %s: recorded checkpoint step %d, published by an attempt killed before recording it", job_id, step
        )


def _finish(job_id: str, attempt: int, outcome: S, **data: Any) -> None:
    """Record how the attempt ended; a database that is away is waited for (the result must not be lost)."""

    def finish() -> None:
        with session_scope() as s:
            job_store.finish_job(s, job_id=job_id, attempt=attempt, outcome=outcome, **data)

    retry_unavailable(finish, what=f"job {job_id}: record {outcome.value}")


PEER_LOST_EXIT = 75  # a rank whose process group broke up (EX_TEMPFAIL): nothing recorded, the attempt is lost


class RankReporter(Reporter):
    """The reporter of ranks other than 0: reports nothing (rank 0 does), takes the stop request (SIGTERM)."""

    def __init__(self) -> None:
        self.stop_requested = False

    def request_stop(self, *_: Any) -> None:
        self.stop_requested = True

    def should_stop(self) -> bool:
        return self.stop_requested


class JobReporter(Reporter):
    """The Reporter the trainer runs with: metrics and sample rollouts in batches, events, checkpoints recorded
    in the job store after they are complete on disk, progress for the ETA, and the stop flag.

    A database that is away (a restart) does not stop training: metrics, samples and events stay buffered and
    are written, every step of them, once it answers again; the calls that must not be skipped (the job
    starting, a checkpoint's row, `sync` before a checkpoint) wait for it."""

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
                    job_store.mark_running(
                        s,
                        job_id=self.job_id,
                        resumed_from_step=resumed_from,
                        processes=data.get("processes", 1),
                        memory_gib=data.get("memory_gib"),
                    )

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
        facts = results.describe_checkpoint(self.store, path)
        if retry_unavailable(
            lambda: self._record_checkpoint(step, facts, metrics), what=f"job {self.job_id}: record checkpoint {step}"
        ):
            log.info("job %s: checkpoint step %d recorded", self.job_id, step)

    def _record_checkpoint(self, step: int, facts: results.CheckpointFacts, metrics: Mapping[str, float]) -> bool:
        with session_scope() as s:
            if (job := self._held(s)) is None:
                return False
            results.record_checkpoint(
                s,
                job_id=self.job_id,
                step=step,
                kind="final" if step == self.total_steps else "periodic",
                location=facts.location,
                bytes=facts.bytes,
                sha256=facts.sha256,
                metrics=dict(metrics),
            )
            results.forget_checkpoints(s, job_id=self.job_id, keep=facts.steps_on_disk | {step})
            states.add_event(s, job, EventKind.checkpoint_saved, step=step, location=facts.location)
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


def main() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no per-shard bars in the worker log
    if world_size_from_env() > 1:
        # a rank of torchrun runs in a session of its own: it must die with torchrun (which dies with the
        # supervisor), or a killed worker would leave ranks training on
        die_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    job_id, attempt = sys.argv[1], int(sys.argv[2])
    sys.exit(run(job_id, attempt))


if __name__ == "__main__":
    main()
