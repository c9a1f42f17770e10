"""The job supervisor: what `run_job(job_id)` does on a worker.

claim (conditional UPDATE queued -> starting, attempt + 1; nothing to claim -> return)
-> start the trainer in its own process group (`python -m workers.trainer_process`; CUDA is never
   initialised in the Celery process)
-> while it runs: write the job's heartbeat, and poll the cancel flag
   (cancelling: SIGTERM -> the trainer checkpoints and stops; after the grace period, SIGKILL)
-> record the outcome the trainer could not record itself (killed, crashed) .
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time

from store import jobs as job_store
from store.db import session_scope
from store.models import JobStatus
from store.settings import get_settings

log = logging.getLogger("rlad.worker")
S = JobStatus


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def supervise(job_id: str, worker: str | None = None) -> JobStatus | None:
    """`worker`: the Celery node name (`gpu@host`), as the workers registry knows it."""
    settings = get_settings()
    with session_scope() as session:
        job = job_store.claim_job(session, job_id=job_id, worker=worker or worker_name())
        if job is None:
            log.info("job %s: nothing to claim (not queued any more)", job_id)
            return None
        attempt = job.attempt
    log.info("job %s: claimed, attempt %d", job_id, attempt)

    proc = subprocess.Popen([sys.executable, "-m", "workers.trainer_process", job_id, str(attempt)],
                            start_new_session=True,  # its own process group: signals reach its children too
                            preexec_fn=_die_with_parent)
    term_sent_at: float | None = None
    last_beat = 0.0
    while True:
        try:
            code = proc.wait(timeout=settings.cancel_poll_s)
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        with session_scope() as session:
            if now - last_beat >= settings.heartbeat_interval_s:
                if not job_store.heartbeat(session, job_id=job_id, attempt=attempt):
                    # the reaper gave the job to another attempt (or it ended): this one must stop
                    log.warning("job %s: attempt %d no longer holds the job; stopping the trainer", job_id, attempt)
                    _signal(proc, signal.SIGKILL)
                last_beat = now
            status = job_store.status_of(session, job_id=job_id)
        if status == S.cancelling and term_sent_at is None:
            log.info("job %s: cancel requested; SIGTERM to the trainer", job_id)
            _signal(proc, signal.SIGTERM)
            term_sent_at = now
        elif term_sent_at is not None and now - term_sent_at > settings.cancel_grace_s:
            log.warning("job %s: trainer still running %.0f s after SIGTERM; SIGKILL", job_id, settings.cancel_grace_s)
            _signal(proc, signal.SIGKILL)
            term_sent_at = float("inf")

    return _record_exit(job_id, attempt, code, cancelled=term_sent_at is not None)


def _die_with_parent() -> None:
    """Linux: the trainer gets SIGKILL if the supervisor dies (worker killed or shut down cold), so no orphan
    keeps writing to a job that the reaper will hand to a new attempt."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _record_exit(job_id: str, attempt: int, code: int, *, cancelled: bool) -> JobStatus | None:
    """The trainer records succeeded/failed itself; here: a cancel that went through, or a death it could not
    report (a signal, an out-of-memory kill, a crash before it reached its own handler)."""
    with session_scope() as session:
        status = job_store.status_of(session, job_id=job_id)
        if status not in (S.starting, S.running, S.cancelling):
            log.info("job %s: attempt %d ended %s (exit code %d)", job_id, attempt, status.value, code)
            return status
        if cancelled or status == S.cancelling:
            job = job_store.finish_job(session, job_id=job_id, attempt=attempt, outcome=S.cancelled, exit_code=code)
        elif code < 0:
            reason = f"trainer killed by signal {-code} ({signal.Signals(-code).name})"
            job = job_store.finish_job(session, job_id=job_id, attempt=attempt, outcome=S.lost, error_message=reason)
        else:
            job = job_store.finish_job(session, job_id=job_id, attempt=attempt, outcome=S.failed, error_code="trainer_exit",
                                       error_message=f"the trainer process exited with code {code} without a result; "
                                                     "see the worker log")
        outcome = job.status if job else None
    log.info("job %s: attempt %d ended %s (exit code %d)", job_id, attempt, outcome.value if outcome else "-", code)
    return outcome
