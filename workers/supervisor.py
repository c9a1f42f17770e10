"""The job supervisor: the `run_job(job_id)` Celery task, and what it does on a worker.

claim (conditional UPDATE queued -> starting, attempt + 1; nothing to claim -> return at once: a message of a
   cancelled or already claimed job costs one query and no process)
-> start the trainer in its own process group (`python -m workers.trainer_process`; CUDA is never
   initialised in the Celery process)
-> while it runs: write the job's heartbeat, and poll the cancel flag
   (cancelling or pausing: SIGTERM -> the trainer checkpoints and stops; after the grace period, SIGKILL)
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
import time
from collections.abc import Callable
from typing import Any, TypeVar

from celery import shared_task
from sqlalchemy.orm import Session

from store import gangs, states
from store import jobs as job_store
from store.db import is_unavailable, retry_unavailable, session_scope
from store.dispatch import RUN_JOB, dispatch_job
from store.gangs import job_resources
from store.models import Job, JobStatus
from store.settings import get_settings
from workers.process_group import Launch, die_with_parent, free_port, trainer_command, trainer_env

log = logging.getLogger("rlad.worker")
S = JobStatus
T = TypeVar("T")


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
    worker = worker or worker_name()

    def claim() -> Launch | int | None:
        """A single node's launch, the node count of a job that needs a gang, or None (nothing to claim)."""
        with session_scope() as session:
            job = session.get(Job, job_id)
            if job is None or job.status != S.queued:
                return None
            nodes, per_node = job_resources(job.spec_resolved)
            if nodes > 1:
                return nodes
            claimed = job_store.claim_job(session, job_id=job_id, worker=worker)
            return Launch(claimed.attempt, 1, per_node) if claimed is not None else None

    with ShutdownRequest() as shutdown:  # from before the claim: a stop request never finds a job half-taken
        if shutdown.requested:
            _hand_back(job_id)
            return None
        launch = retry_unavailable(claim, what=f"job {job_id}: claim")
        if isinstance(launch, int):
            launch = _gather(job_id, worker, shutdown)
        if launch is None:
            log.info("job %s: nothing to claim (cancelled, or claimed by other workers); message dropped", job_id)
            return None
        settings = get_settings()
        log.info(
            "job %s: claimed, attempt %d%s",
            job_id,
            launch.attempt,
            f" ({launch.nodes} node(s) x {launch.per_node} processes; node {launch.node_rank})"
            if launch.world_size > 1
            else "",
        )
        proc = subprocess.Popen(
            trainer_command(
                job_id,
                launch,
                shutdown_timeout_s=max(settings.cancel_grace_s, settings.shutdown_grace_s),
                join_timeout_s=settings.gang_wait_s,
            ),
            env=trainer_env(launch),
            start_new_session=True,  # its own process group: signals reach torchrun, which passes them on
            preexec_fn=die_with_parent,
        )
        code, cancelled = _watch(proc, job_id, launch, worker, shutdown)
        if shutdown.requested:
            return _release(job_id, launch, code)
    return _record_exit(job_id, launch, code, cancelled=cancelled)


def _gather(job_id: str, worker: str, shutdown: ShutdownRequest) -> Launch | None:
    """Take a seat in the job's gang and wait until every node has one (`store.gangs`). None when the job went
    on without this worker, the gathering expired or the worker is stopping: then the message this worker took
    goes back to the queue (another gathering, another worker)."""
    settings = get_settings()
    address = settings.resolved_node_address
    port = free_port(address)

    def join() -> gangs.Gang | None:
        with session_scope() as session:
            return gangs.join(
                session, job_id=job_id, worker=worker, address=address, port=port, wait_s=settings.gang_wait_s
            )

    gang = retry_unavailable(join, what=f"job {job_id}: claim a seat")
    if gang is None:
        return None
    log.info(
        "job %s: seat %d of %d for attempt %d; waiting for the other nodes until %s",
        job_id,
        len(gang.workers),
        gang.nodes,
        gang.attempt,
        gang.deadline,
    )
    attempt = gang.attempt
    while gang.state == "forming" and not shutdown.requested:
        time.sleep(settings.cancel_poll_s)
        gang = retry_unavailable(
            lambda: _in_session(gangs.gang_of, job_id=job_id, attempt=attempt, worker=worker),
            what=f"job {job_id}: gang",
        )
    if gang.state == "formed":
        return Launch(attempt, gang.nodes, _per_node(job_id), gang.node_rank, gang.endpoint, address)
    queue = retry_unavailable(
        lambda: _in_session(_leave, job_id=job_id, attempt=attempt, worker=worker), what=f"job {job_id}: leave"
    )
    if queue is not None:
        why = "the worker is stopping" if shutdown.requested else "not every node was claimed in time"
        log.info("job %s: seat given up (%s); its message goes back to queue %s", job_id, why, queue)
        _dispatch(job_id, queue)
    return None


def _leave(session: Session, *, job_id: str, attempt: int, worker: str) -> str | None:
    if not gangs.leave(session, job_id=job_id, attempt=attempt, worker=worker):
        return None
    return job_store.get_job(session, team_id=None, job_id=job_id).queue


def _per_node(job_id: str) -> int:
    def read() -> int:
        with session_scope() as session:
            return job_resources(job_store.get_job(session, team_id=None, job_id=job_id).spec_resolved)[1]

    return retry_unavailable(read, what=f"job {job_id}: resources")


def _in_session(fn: Callable[..., T], **kwargs: Any) -> T:
    with session_scope() as session:
        return fn(session, **kwargs)


def _watch(
    proc: subprocess.Popen[bytes], job_id: str, launch: Launch, worker: str, shutdown: ShutdownRequest
) -> tuple[int, bool]:
    """Heartbeats (the job's, and this node's seat in a gang), the cancel flag and the stop request until the
    trainer exits: (exit code, cancelled)."""
    attempt = launch.attempt
    settings = get_settings()
    term_sent_at: float | None = None  # SIGTERM sent to the trainer (cancel or shutdown) at this time
    grace = settings.cancel_grace_s
    cancelled = stopping = False
    ended_at: float | None = None  # when this attempt's end was seen recorded while its processes still ran
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
                    if launch.nodes > 1:
                        gangs.stamp(session, job_id=job_id, attempt=attempt, worker=worker)
                    if job_store.heartbeat(session, job_id=job_id, attempt=attempt):
                        pass
                    elif job_store.attempt_ended(session, job_id=job_id, attempt=attempt):
                        # rank 0 (or another node) recorded the end; the processes leave the group after it
                        ended_at = ended_at or now
                        if now - ended_at > grace:
                            log.warning("job %s: processes still running %.0f s after the end; SIGKILL", job_id, grace)
                            _signal(proc, signal.SIGKILL)
                    else:
                        # the reaper gave the job to another attempt: this one must stop
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
        if status in (S.cancelling, S.pausing) and not cancelled:
            cancelled = True  # the owner asked the run to stop (cancel, or pause: it ends paused)
            if term_sent_at is None:
                log.info("job %s: %s requested; SIGTERM to the trainer", job_id, status.value.removesuffix("ing"))
                _signal(proc, signal.SIGTERM)
                term_sent_at = now


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


def _dispatch(job_id: str, queue: str, copies: int = 1) -> None:
    try:
        dispatch_job(job_id, queue, copies=copies)
    except Exception:  # the reaper sends undelivered queued jobs again
        log.exception("job %s: the broker could not take its id; the reaper will send it again", job_id)


def _release(job_id: str, launch: Launch, code: int) -> JobStatus | None:
    """The worker is stopping and the trainer has ended (checkpointed, or killed after the grace period): hand
    the job back to the queue unless the trainer recorded its end itself. A job on several nodes stops on every
    node (a stop asked of one rank stops all) and goes back as one message per node."""
    attempt = launch.attempt

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
        _dispatch(job_id, queue, copies=launch.nodes)
        log.info("job %s: attempt %d released to queue %s (the worker is stopping)", job_id, attempt, queue)
    else:
        log.info(
            "job %s: attempt %d ended %s while the worker stopped", job_id, attempt, status.value if status else "-"
        )
    return status


def _record_exit(job_id: str, launch: Launch, code: int, *, cancelled: bool) -> JobStatus | None:
    """The trainer records succeeded/failed itself; here: a cancel that went through, or a death it could not
    report (a signal, an out-of-memory kill, a crash before it reached its own handler).

    A process group (torchrun) that ends with an error and no recorded end lost a process: another rank or
    node died, or the group broke up (the ranks record their own faults as `failed`): the attempt is `lost`
    and the job resumes from its last checkpoint. One that ends cleanly had its end recorded by rank 0, which
    may run on another node."""
    attempt = launch.attempt

    def record() -> JobStatus | None:
        with session_scope() as session:
            status = job_store.status_of(session, job_id=job_id)
            if status not in states.ACTIVE:
                return status
            if status == S.pausing:  # checkpointed and stopped (or killed after the grace): paused
                job = job_store.finish_job(session, job_id=job_id, attempt=attempt, outcome=S.paused, exit_code=code)
            elif cancelled or status == S.cancelling:
                job = job_store.finish_job(session, job_id=job_id, attempt=attempt, outcome=S.cancelled, exit_code=code)
            elif launch.world_size > 1 and code == 0:
                log.warning("job %s: this node's processes ended cleanly; rank 0 records the end", job_id)
                return status
            elif launch.world_size > 1:
                where = f" on node {launch.node_rank} of {launch.nodes}" if launch.nodes > 1 else ""
                reason = (
                    f"the job's process group ended without a result{where} (torchrun exit code {code}): a "
                    "process or node was lost"
                )
                job = job_store.finish_job(
                    session, job_id=job_id, attempt=attempt, outcome=S.lost, error_message=reason
                )
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
