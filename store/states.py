"""The job state machine: the one place that says which status may follow which, and which event each
transition writes.

    queued -> starting -> running -> succeeded | failed | cancelled
    queued -> cancelled                      (cancel before a worker claimed it)
    starting | running -> cancelling -> cancelled   (the trainer checkpoints and stops)
    starting | running | cancelling -> lost -> queued (resume)  |  failed (no attempts left)
    starting | running -> queued             (released: a stopping worker checkpointed and handed it back)
    queued -> paused                         (pause before a worker claimed it)
    starting | running -> pausing -> paused  (the trainer checkpoints and stops; the worker is free)
    paused -> queued (resume)  |  cancelled;  pausing -> cancelling (cancel while pausing)

`transition` changes the status and adds the event in the caller's transaction, so a status and its
event are never seen apart. It raises `InvalidTransition` for a move the table does not allow.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from store.errors import InvalidTransition
from store.models import EventKind, Job, JobEvent, JobStatus, utcnow

S = JobStatus
TERMINAL = frozenset({S.succeeded, S.failed, S.cancelled})
ACTIVE = frozenset({S.starting, S.running, S.cancelling, S.pausing})  # a worker holds the job

ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    S.queued: frozenset({S.starting, S.cancelled, S.paused}),
    S.starting: frozenset({S.running, S.cancelling, S.pausing, S.succeeded, S.failed, S.lost, S.queued}),
    S.running: frozenset({S.cancelling, S.pausing, S.succeeded, S.failed, S.lost, S.queued}),
    S.cancelling: frozenset({S.cancelled, S.succeeded, S.failed, S.lost}),
    S.pausing: frozenset({S.paused, S.cancelling, S.succeeded, S.failed, S.lost}),
    S.paused: frozenset({S.queued, S.cancelled}),
    S.lost: frozenset({S.queued, S.failed, S.cancelled, S.paused}),
    S.succeeded: frozenset(),
    S.failed: frozenset(),
    S.cancelled: frozenset(),
}

# the event a move into each status writes (starting -> running writes started or resumed: see below)
EVENT_FOR: dict[JobStatus, EventKind] = {
    S.queued: EventKind.queued,
    S.starting: EventKind.claimed,
    S.running: EventKind.started,
    S.cancelling: EventKind.cancel_requested,
    S.pausing: EventKind.pause_requested,
    S.paused: EventKind.paused,
    S.succeeded: EventKind.succeeded,
    S.failed: EventKind.failed,
    S.cancelled: EventKind.cancelled,
    S.lost: EventKind.lost,
}


def is_terminal(status: JobStatus) -> bool:
    return status in TERMINAL


def check(current: JobStatus, target: JobStatus) -> None:
    if target not in ALLOWED[current]:
        raise InvalidTransition(current.value, target.value)


def transition(
    session: Session, job: Job, target: JobStatus, *, event: EventKind | None = None, **data: Any
) -> JobEvent:
    """Move `job` to `target` and add the transition's event (kind `event` or the default for `target`)."""
    check(job.status, target)
    now = utcnow()
    job.status = target
    job.updated_at = now
    if target in TERMINAL:
        job.finished_at = now
    ev = JobEvent(job_id=job.id, kind=event or EVENT_FOR[target], attempt=job.attempt, data=data, created_at=now)
    session.add(ev)
    return ev


def add_event(session: Session, job: Job, kind: EventKind, **data: Any) -> JobEvent:
    """An event that is not a transition (checkpoint_saved, eval_completed, step_skipped)."""
    ev = JobEvent(job_id=job.id, kind=kind, attempt=job.attempt, data=data, created_at=utcnow())
    session.add(ev)
    return ev
