"""The job supervisor: the `run_job(job_id)` Celery task, and what it does on a worker.

claim (conditional UPDATE queued -> starting, attempt + 1; nothing to claim -> return at once: a message of a
   cancelled or already claimed job costs one query and no process)
-> start the trainer in its own process group (`python -m workers.trainer_process`; CUDA is never
   initialised in the Celery process)
-> while it runs: write the job's heartbeat, and poll the cancel flag
   (cancelling: SIGTERM -> the trainer checkpoints and stops; after the grace period, SIGKILL)
-> record the outcome the trainer could not record itself (killed, crashed).

The database may go away while a job runs (a restart, a failover): the trainer keeps training and the
supervisor keeps watching it, retrying its database calls until the database is back. Only the job's real
end is recorded, so an outage costs no attempt.

A worker that is told to stop (SIGTERM: a deploy, `docker compose stop`, `rlad up` ending) asks the trainer for
a checkpoint, then releases the job to the queue at once (`released`: not a loss) and sends its id again, so
another worker resumes it from that checkpoint without waiting for the heartbeat timeout.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from celery import shared_task

from store import jobs as job_store
from store.db import is_unavailable, retry_unavailable, session_scope
from store.dispatch import RUN_JOB, dispatch_job
from store.models import JobStatus
from store.settings import get_settings

log = logging.getLogger("rlad.worker")
S = JobStatus


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# "This worker is stopping", in memory shared by the Celery main process and its pool children (made before
# they are forked): the main process sets it when its shutdown starts (workers.celery_app), a SIGTERM that
# reaches a supervisor directly sets it too, and every supervisor of the node reads it.
_WORKER_STOPPING = multiprocessing.RawValue("b", 0)


def mark_worker_stopping() -> None:
    _WORKER_STOPPING.value = 1


def worker_stopping() -> bool:
    return bool(_WORKER_STOPPING.value)


class ShutdownRequest:
    """While a job is supervised, SIGTERM to this process (a signal to the worker's whole process group) also
    means "the worker is stopping"."""

    def __init__(self) -> None:
        self._previous: Any = None

    @property
    def requested(self) -> bool:
        return worker_stopping()

    def __enter__(self) -> ShutdownRequest:
        self._previous = signal.signal(signal.SIGTERM, lambda *_: mark_worker_stopping())
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)


@shared_task(name=RUN_JOB, bind=True)
def run_job(self: Any, job_id: str) -> None:
    """The task a job's id is sent to (thin: the supervisor below does the work)."""
    supervise(job_id, worker=self.request.hostname)


def supervise(job_id: str, worker: str | None = None) -> JobStatus | None:
    """`worker`: the Celery node name (`gpu@host`), as the workers registry knows it."""

    def claim() -> int | None:
        with session_scope() as session:
            job = job_store.claim_job(session, job_id=job_id, worker=worker or worker_name())
            return job.attempt if job is not None else None

    with ShutdownRequest() as shutdown:  # from before the claim: a stop request never finds a job half-taken
        if shutdown.requested:
            _hand_back(job_id)
            return None
        attempt = retry_unavailable(claim, what=f"job {job_id}: claim")
        if attempt is None:
            log.info("job %s: nothing to claim (cancelled, or claimed by another worker); message dropped", job_id)
            return None
        log.info("job %s: claimed, attempt %d", job_id, attempt)
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.trainer_process", job_id, str(attempt)],
            start_new_session=True,  # its own process group: signals reach its children too
            preexec_fn=_die_with_parent,
        )
        code, cancelled = _watch(proc, job_id, attempt, shutdown)
        if shutdown.requested:
            return _release(job_id, attempt, code)
    return _record_exit(job_id, attempt, code, cancelled=cancelled)


def _watch(proc: subprocess.Popen[bytes], job_id: str, attempt: int, shutdown: ShutdownRequest) -> tuple[int, bool]:
    """Heartbeats, the cancel flag and the stop request until the trainer exits: (exit code, cancelled)."""
    settings = get_settings()
    term_sent_at: float | None = None  # SIGTERM sent to the trainer (cancel or shutdown) at this time
    grace = settings.cancel_grace_s
    cancelled = stopping = False
    last_beat = 0.0
    next_db_at, db_delay = 0.0, 0.5  # the database's next try, and the backoff while it is away
    while True:
        try:
            return proc.wait(timeout=settings.cancel_poll_s), cancelled
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if shutdown.requested and not stopping:
            stopping = True
            log.info("job %s: the worker is stopping; the trainer checkpoints, then the job is released", job_id)
            if term_sent_at is None:
                _signal(proc, signal.SIGTERM)
                term_sent_at = now
            grace = min(grace, settings.shutdown_grace_s) if cancelled else settings.shutdown_grace_s
        if term_sent_at is not None and now - term_sent_at > grace:
            log.warning("job %s: trainer still running %.0f s after SIGTERM; SIGKILL", job_id, grace)
            _signal(proc, signal.SIGKILL)
            term_sent_at = float("inf")
        if now < next_db_at:
            continue
        try:
            with session_scope() as session:
                if now - last_beat >= settings.heartbeat_interval_s:
                    if not job_store.heartbeat(session, job_id=job_id, attempt=attempt):
                        # the reaper gave the job to another attempt (or it ended): this one must stop
                        log.warning("job %s: attempt %d no longer holds the job; stopping the trainer", job_id, attempt)
                        _signal(proc, signal.SIGKILL)
                    last_beat = now
                status = job_store.status_of(session, job_id=job_id)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            # the trainer is healthy and keeps training; the database is tried again with backoff
            if db_delay == 0.5:
                log.warning(
                    "job %s: the database is unavailable (%s); the trainer keeps running", job_id, type(exc).__name__
                )
            next_db_at, db_delay = now + db_delay, min(db_delay * 2, settings.db_retry_max_s)
            continue
        if db_delay > 0.5:
            log.info("job %s: the database is back", job_id)
        next_db_at, db_delay = 0.0, 0.5
        if status == S.cancelling and not cancelled:
            cancelled = True
            if term_sent_at is None:
                log.info("job %s: cancel requested; SIGTERM to the trainer", job_id)
                _signal(proc, signal.SIGTERM)
                term_sent_at = now


def _die_with_parent() -> None:
    """Linux: the trainer gets SIGKILL if the supervisor dies (worker killed or shut down cold), so no orphan
    keeps writing to a job that the reaper will hand to a new attempt."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _hand_back(job_id: str) -> None:
    """A message that reached a worker already stopping (Celery's last poll can take one more): the job stays
    queued and its id goes back to the broker for another worker."""

    def queued_on() -> str | None:
        with session_scope() as session:
            job = job_store.get_job(session, team_id=None, job_id=job_id)
            return job.queue if job.status == S.queued else None

    queue = retry_unavailable(queued_on, what=f"job {job_id}: hand back")
    if queue is not None:
        _dispatch(job_id, queue)
        log.info("job %s: the worker is stopping; its message was sent back to queue %s", job_id, queue)


def _dispatch(job_id: str, queue: str) -> None:
    try:
        dispatch_job(job_id, queue)
    except Exception:  # the reaper sends undelivered queued jobs again
        log.exception("job %s: the broker could not take its id; the reaper will send it again", job_id)


def _release(job_id: str, attempt: int, code: int) -> JobStatus | None:
    """The worker is stopping and the trainer has ended (checkpointed, or killed after the grace period): hand
    the job back to the queue unless the trainer recorded its end itself."""

    def release() -> tuple[JobStatus | None, str | None]:
        with session_scope() as session:
            job = job_store.release_job(
                session, job_id=job_id, attempt=attempt, reason=f"worker stopping (trainer exit code {code})"
            )
            if job is None:
                return job_store.status_of(session, job_id=job_id), None
            return job.status, job.queue if job.status == S.queued else None

    status, queue = retry_unavailable(release, what=f"job {job_id}: release")
    if queue is not None:
        _dispatch(job_id, queue)
        log.info("job %s: attempt %d released to queue %s (the worker is stopping)", job_id, attempt, queue)
    else:
        log.info(
            "job %s: attempt %d ended %s while the worker stopped", job_id, attempt, status.value if status else "-"
        )
    return status


def _record_exit(job_id: str, attempt: int, code: int, *, cancelled: bool) -> JobStatus | None:
    """The trainer records succeeded/failed itself; here: a cancel that went through, or a death it could not
    report (a signal, an out-of-memory kill, a crash before it reached its own handler)."""

    def record() -> JobStatus | None:
        with session_scope() as session:
            status = job_store.status_of(session, job_id=job_id)
            if status not in (S.starting, S.running, S.cancelling):
                return status
            if cancelled or status == S.cancelling:
                job = job_store.finish_job(session, job_id=job_id, attempt=attempt, outcome=S.cancelled, exit_code=code)
            elif code < 0:
                reason = f"trainer killed by signal {-code} ({signal.Signals(-code).name})"
                job = job_store.finish_job(
                    session, job_id=job_id, attempt=attempt, outcome=S.lost, error_message=reason
                )
            else:
                job = job_store.finish_job(
                    session,
                    job_id=job_id,
                    attempt=attempt,
                    outcome=S.failed,
                    error_code="trainer_exit",
                    error_message=f"the trainer process exited with code {code} without a result; see the worker log",
                )
            return job.status if job else None

    outcome = retry_unavailable(record, what=f"job {job_id}: record the end of attempt {attempt}")
    log.info("job %s: attempt %d ended %s (exit code %d)", job_id, attempt, outcome.value if outcome else "-", code)
    return outcome
