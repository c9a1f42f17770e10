"""Store functions over jobs: submit, read, list, cancel (API side); claim, run, heartbeat, finish, reap
(worker side). Keyword-only; they own no transaction: the caller commits (`store.db.session_scope`, or the
API's request dependency). Status changes go through `store.states.transition`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rlad_core.config import ConfigError, parse_config
from store import gangs, refs, states, usage, webhooks
from store import workers as worker_store
from store.errors import IdempotencyConflict, InvalidSpec, NotFound, QuotaExceeded
from store.models import EventKind, Job, JobEvent, JobStatus, NodeClaim, utcnow
from store.settings import get_settings

S = JobStatus
DATASET_SCHEME = refs.DATASET_SCHEME  # imported from here by the API
# fields the service sets itself: a job's checkpoints belong in the result store
SERVICE_FIELDS = {"output_dir": "the service writes checkpoints to its result store; fix: remove output_dir"}


def request_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Submit
# ---------------------------------------------------------------------------------------------------------


def resolve_spec(session: Session, *, team_id: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Validate a submitted spec with the core config and return it with every default filled in.

    Its models and dataset must be ones the team's job may read (`store.refs`: the team's own
    `dataset:<id>` and `checkpoint:<job>[/<step>]`, a Hugging Face id, a path under the model roots); they
    are kept as written, and the trainer process turns them into local paths."""
    errors = [(f, m) for f, m in SERVICE_FIELDS.items() if spec.get(f) is not None]
    try:
        config = parse_config({k: v for k, v in spec.items() if k not in SERVICE_FIELDS})
    except ConfigError as exc:
        errors += exc.errors
        raise InvalidSpec(errors) from None
    if errors:
        raise InvalidSpec(errors)
    resolved = config.to_json_dict()
    refs.check_refs(session, team_id=team_id, spec=resolved, settings=get_settings())
    return resolved


def place_job(session: Session, *, resolved: dict[str, Any], queues: list[str], timeout_s: float) -> str:
    """The queue a job goes to: the first of `queues` whose live workers can serve its device and resources
    (`nodes` workers, each with `gpus_per_node` CUDA devices on CUDA). Workers advertise their devices
    (`store.workers`); a queue with no live worker cannot be judged, so the first queue takes the job when
    none of them is known to serve it, and the trainer checks the device when it starts. When live workers
    show that no queue can ever serve the job: `InvalidSpec` naming the field and the fix."""
    nodes, per_node = gangs.job_resources(resolved)
    device = resolved["device"]
    need = per_node if per_node > 1 or not device.startswith("cuda") else int(device.partition(":")[2] or 0) + 1

    def fits(devices: int) -> bool:
        if device.startswith("cuda"):
            return devices >= need
        return device != "auto" or devices == 0 or devices >= per_node  # auto takes the GPUs a worker has

    live = {q: worker_store.queue_devices(session, queue=q, timeout_s=timeout_s) for q in queues}
    for q in queues:
        if sum(fits(d) for d in live[q]) >= nodes:
            return q
    if not live[queues[0]]:
        return queues[0]
    counts = [d for q in queues for d in live[q]]
    most_workers = max(len(live[q]) for q in queues)
    if most_workers < nodes:
        raise InvalidSpec(
            [
                (
                    "resources.nodes",
                    f"{nodes} nodes: the queues {', '.join(queues)} have at most {most_workers} live worker"
                    f"{'s' * (most_workers != 1)}, one per node; fix: ask for at most {most_workers} "
                    f"node{'s' * (most_workers != 1)}, or start more workers",
                )
            ]
        )
    most = max(counts)
    if per_node > 1 or not device.startswith("cuda"):
        fix = f"ask for at most {most} per node" if most else "use device cpu"
        raise InvalidSpec(
            [
                (
                    "resources.gpus_per_node",
                    f"{per_node} GPUs per node on {nodes} node(s): the live workers have at most {most} CUDA "
                    f"device{'s' * (most != 1)} each; fix: {fix}",
                )
            ]
        )
    fix = f"use cuda:0..cuda:{most - 1} or auto" if most else "use cpu or auto"
    raise InvalidSpec(
        [
            (
                "device",
                f"{device!r}: the live workers of queue {queues[0]!r} have at most {most} CUDA "
                f"device{'s' * (most != 1)}; fix: {fix}",
            )
        ]
    )


def submit_job(
    session: Session,
    *,
    team_id: str,
    spec: dict[str, Any],
    idempotency_key: str | None = None,
    queue: str | list[str] = "gpu",
    max_attempts: int = 3,
    max_active: int | None = None,
    webhook_url: str | None = None,
) -> tuple[Job, bool]:
    """Insert a queued job (and its `queued` event). Returns (job, created).

    With an idempotency key, the same key and body return the existing job (created=False); the same key
    with another body raises `IdempotencyConflict`. Concurrent submissions with one key create one job:
    the unique constraint (team, key) decides, inside a savepoint. A team with `max_active` active jobs
    (`usage.count_active_jobs`) gets `QuotaExceeded` and nothing is stored (a repeated idempotent request still
    returns its job). `queue`: the queue, or the queues in order of preference (`place_job` picks one)."""
    digest = request_hash(spec)
    if idempotency_key is not None:
        existing = _by_idempotency_key(session, team_id, idempotency_key)
        if existing is not None:
            return _same_request(existing, idempotency_key, digest), False
    if max_active is not None and usage.count_active_jobs(session, team_id=team_id) >= max_active:
        raise QuotaExceeded(max_active)
    if webhook_url is not None and (why := webhooks.check_url(webhook_url)) is not None:
        raise InvalidSpec([("webhook_url", why)])
    settings = get_settings()
    usage.check_storage(session, team_id=team_id, limit=settings.max_storage_bytes_per_team)
    resolved = resolve_spec(session, team_id=team_id, spec=spec)
    rollouts = int(resolved["steps"]) * int(resolved["batch_size"])
    if rollouts > settings.max_rollouts_per_job:
        raise InvalidSpec(
            [
                (
                    "steps",
                    f"steps x batch_size = {rollouts} rollouts is over the service's limit of "
                    f"{settings.max_rollouts_per_job} per job (max_rollouts_per_job); fix: fewer steps or a "
                    "smaller batch_size, or split the run into jobs that resume from checkpoint:<job>",
                )
            ]
        )
    queue = place_job(
        session,
        resolved=resolved,
        queues=[queue] if isinstance(queue, str) else queue,
        timeout_s=settings.heartbeat_timeout_s,
    )
    job = Job(
        team_id=team_id,
        name=resolved.get("name"),
        method=resolved["method"],
        spec=spec,
        spec_resolved=resolved,
        status=S.queued,
        queue=queue,
        max_attempts=max_attempts,
        total_steps=resolved["steps"],
        idempotency_key=idempotency_key,
        request_hash=digest,
        dispatched_at=utcnow(),
        webhook_url=webhook_url,
        webhook_status=webhooks.PENDING if webhook_url else None,
    )
    try:
        with session.begin_nested():
            session.add(job)
            session.flush()
            session.add(JobEvent(job_id=job.id, kind=EventKind.queued, attempt=0, data={"queue": queue}))
            session.flush()
    except IntegrityError:
        if idempotency_key is None:
            raise
        existing = _by_idempotency_key(session, team_id, idempotency_key)
        if existing is None:
            raise
        return _same_request(existing, idempotency_key, digest), False
    return job, True


def _by_idempotency_key(session: Session, team_id: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.team_id == team_id, Job.idempotency_key == key))


def _same_request(job: Job, key: str, digest: str) -> Job:
    if job.request_hash != digest:
        raise IdempotencyConflict(key, job.id)
    return job


# ---------------------------------------------------------------------------------------------------------
# Read
# ---------------------------------------------------------------------------------------------------------


def get_job(session: Session, *, team_id: str | None, job_id: str) -> Job:
    """The job, if it belongs to `team_id` (None: any team, for workers). Another team's job is not found."""
    job = session.get(Job, job_id)
    if job is None or (team_id is not None and job.team_id != team_id):
        raise NotFound("job", job_id)
    return job


def list_jobs(
    session: Session,
    *,
    team_id: str,
    after: str | None = None,
    limit: int = 50,
    status: list[JobStatus] | None = None,
    method: list[str] | None = None,
) -> tuple[list[Job], bool]:
    """Newest first; `after` is the last id of the previous page. Returns (jobs, has_more)."""
    q = select(Job).where(Job.team_id == team_id)
    if after:
        q = q.where(Job.id < after)
    if status:
        q = q.where(Job.status.in_(status))
    if method:
        q = q.where(Job.method.in_(method))
    rows = list(session.scalars(q.order_by(Job.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def queue_position(session: Session, *, job: Job) -> int | None:
    """1 = next to be claimed on its queue; None unless queued."""
    if job.status != S.queued:
        return None
    ahead = session.scalar(
        select(func.count()).select_from(Job).where(Job.queue == job.queue, Job.status == S.queued, Job.id < job.id)
    )
    return int(ahead or 0) + 1


def list_events(session: Session, *, job_id: str, after: int | None = None, limit: int = 500) -> list[JobEvent]:
    q = select(JobEvent).where(JobEvent.job_id == job_id)
    if after is not None:
        q = q.where(JobEvent.id > after)
    return list(session.scalars(q.order_by(JobEvent.id).limit(limit)))


@dataclass(frozen=True)
class Progress:
    eta_s: float | None
    heartbeat_age_s: float | None


def progress(job: Job, now: datetime | None = None) -> Progress:
    now = now or utcnow()
    eta = None
    if job.seconds_per_step is not None and not states.is_terminal(job.status) and job.status != S.paused:
        eta = max(job.total_steps - job.last_step, 0) * job.seconds_per_step  # none while paused: it waits for you
    age = (now - job.heartbeat_at).total_seconds() if job.heartbeat_at and job.status in states.ACTIVE else None
    return Progress(eta, age)


# ---------------------------------------------------------------------------------------------------------
# Cancel
# ---------------------------------------------------------------------------------------------------------


def request_cancel(session: Session, *, team_id: str, job_id: str) -> Job:
    """Queued, paused or lost -> cancelled at once; starting/running/pausing -> cancelling (the worker stops
    the trainer). Cancelling an already cancelling or terminal job is a no-op (idempotent); a finished job
    stays as it is."""
    job = _locked(session, job_id, team_id)
    if job.status in (S.queued, S.lost, S.paused):
        states.transition(session, job, S.cancelled, reason=f"cancelled while {job.status.value}")
    elif job.status in (S.starting, S.running, S.pausing):
        states.transition(session, job, S.cancelling)
    return job


def request_pause(session: Session, *, team_id: str, job_id: str) -> tuple[Job, bool]:
    """Queued -> paused at once; starting/running -> pausing (the worker has the trainer checkpoint and stop,
    then the job is paused and the worker free). Returns (job, whether this request changed it): pausing a
    pausing or paused job is a no-op; any other status (cancelling, finished, lost) raises `InvalidTransition`."""
    job = _locked(session, job_id, team_id)
    if job.status == S.queued:
        states.transition(session, job, S.paused, reason="paused before it ran", step=job.last_step)
    elif job.status in (S.starting, S.running):
        states.transition(session, job, S.pausing)
    elif job.status in (S.pausing, S.paused):
        return job, False
    else:
        states.check(job.status, S.pausing)  # raises, naming both statuses
    return job, True


def request_resume(session: Session, *, team_id: str, job_id: str) -> tuple[Job, bool]:
    """Paused -> queued (the next attempt resumes from the last checkpoint); returns (job, queued now: the caller
    dispatches it). A job that is not paused is left as it is (queued, running: a no-op), except a pausing one,
    which raises `InvalidTransition` (it cannot be resumed before its trainer has stopped)."""
    job = _locked(session, job_id, team_id)
    if job.status == S.paused:
        states.transition(session, job, S.queued, reason="resumed", next_attempt=job.attempt + 1)
        job.dispatched_at = utcnow()
        return job, True
    if job.status == S.pausing or states.is_terminal(job.status):
        states.check(job.status, S.queued)
    return job, False


def _locked(session: Session, job_id: str, team_id: str | None = None) -> Job:
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None or (team_id is not None and job.team_id != team_id):
        raise NotFound("job", job_id)
    return job


# ---------------------------------------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------------------------------------


def claim_job(session: Session, *, job_id: str, worker: str) -> Job | None:
    """queued -> starting with attempt + 1 (event `claimed`), under the job's row lock: of two workers handed
    the same job (a redelivered message), exactly one gets it; the other finds it starting. None when the job
    is not queued (any more)."""
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None or job.status != S.queued:
        return None
    now = utcnow()
    job.attempt += 1
    job.worker, job.heartbeat_at, job.started_at = worker, now, job.started_at or now
    states.transition(session, job, S.starting, worker=worker, attempt=job.attempt)
    return job


def mark_running(session: Session, *, job_id: str, resumed_from_step: int | None, **data: Any) -> Job:
    """starting -> running, writing `started`, or `resumed` when the trainer continues from a checkpoint (with
    `data`: how many processes run it). A job cancelled while it was loading stays cancelling (the supervisor
    is stopping it), one paused while it was loading stays pausing."""
    job = _locked(session, job_id)
    if job.status == S.starting:
        if resumed_from_step is not None:
            states.transition(session, job, S.running, event=EventKind.resumed, step=resumed_from_step, **data)
        else:
            states.transition(session, job, S.running, **data)
    return job


def heartbeat(session: Session, *, job_id: str, attempt: int) -> bool:
    """Stamp heartbeat_at if this attempt still holds the job; False means it does not (stop working)."""
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.status.in_(states.ACTIVE))
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return cast(CursorResult[Any], res).rowcount == 1


def attempt_ended(session: Session, *, job_id: str, attempt: int) -> bool:
    """Whether `attempt` is over but still the job's last (it ended, or was released or lost and not claimed
    again): its processes may still be leaving their process group, nobody else runs the job yet."""
    job = session.get(Job, job_id)
    return job is not None and job.attempt == attempt and job.status not in states.ACTIVE


def record_progress(
    session: Session, *, job_id: str, attempt: int, last_step: int, seconds_per_step: float | None
) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt)
        .values(last_step=last_step, seconds_per_step=seconds_per_step)
        .execution_options(synchronize_session=False)
    )


def status_of(session: Session, *, job_id: str) -> JobStatus:
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    if status is None:
        raise NotFound("job", job_id)
    return status


def finish_job(
    session: Session,
    *,
    job_id: str,
    attempt: int,
    outcome: JobStatus,
    error_code: str | None = None,
    error_message: str | None = None,
    **data: Any,
) -> Job | None:
    """Record the end of an attempt: succeeded, failed, cancelled (after cancelling), paused (after pausing)
    or lost.

    A job that this attempt no longer holds (re-queued by the reaper, already terminal) is left alone:
    returns None. A run that stopped because it was cancelled ends `cancelled` whatever the outcome."""
    job = _locked(session, job_id)
    if job.attempt != attempt or job.status not in states.ACTIVE:
        return None
    if job.status == S.cancelling and outcome in (S.succeeded, S.cancelled, S.lost, S.paused):
        # a cancelled run is not retried; one that reached its last step before it saw the cancel succeeded
        outcome = S.succeeded if outcome == S.succeeded and job.last_step >= job.total_steps else S.cancelled
    elif job.status == S.pausing and outcome in (S.succeeded, S.cancelled, S.lost, S.paused):
        # paused as asked (a loss too: the resume continues from the last checkpoint), unless it finished
        outcome = S.succeeded if outcome == S.succeeded and job.last_step >= job.total_steps else S.paused
    if outcome == S.paused:
        job.worker, job.heartbeat_at = None, None
        data = {"step": job.last_step, **data}
    if outcome == S.failed:
        job.error_code, job.error_message = error_code or "training_failed", error_message
        data = {"code": job.error_code, "message": error_message, **data}
    elif outcome == S.lost:
        data = {"reason": error_message, **data}
    states.transition(session, job, outcome, **data)
    return job


def lost_count(session: Session, *, job_id: str) -> int:
    """How many attempts of the job were lost (its `lost` events): what `max_attempts` bounds."""
    n = session.scalar(
        select(func.count()).select_from(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == EventKind.lost)
    )
    return int(n or 0)


def release_job(session: Session, *, job_id: str, attempt: int, reason: str) -> Job | None:
    """A worker that is stopping hands the job back: queued again at once (the next attempt resumes from the
    last checkpoint), with a `released` event naming the step it reached; not a loss, so it does not use up
    `max_attempts`. A job being cancelled ends cancelled instead. None when this attempt no longer holds the job.
    The caller dispatches the returned queued job."""
    job = _locked(session, job_id)
    if job.attempt != attempt or job.status not in states.ACTIVE:
        return None
    if job.status == S.cancelling:
        states.transition(session, job, S.cancelled, reason=f"{reason} while cancelling")
        return job
    if job.status == S.pausing:
        states.transition(session, job, S.paused, reason=f"{reason} while pausing", step=job.last_step)
        job.worker, job.heartbeat_at = None, None
        return job
    states.transition(
        session,
        job,
        S.queued,
        event=EventKind.released,
        reason=reason,
        step=job.last_step,
        next_attempt=job.attempt + 1,
    )
    job.worker, job.heartbeat_at, job.dispatched_at = None, None, utcnow()
    return job


def _lose(session: Session, job: Job, reason: str, now: datetime) -> None:
    """An active attempt whose worker is gone: lost (the reaper queues it again), or, when its owner had asked
    to stop it, what they asked for."""
    age = (now - job.heartbeat_at).total_seconds() if job.heartbeat_at else None
    if job.status == S.cancelling:  # nobody will resume a job its owner cancelled
        states.transition(session, job, S.cancelled, reason="worker lost while cancelling", heartbeat_age_s=age)
    elif job.status == S.pausing:  # paused, as asked: a resume continues from the last checkpoint
        states.transition(session, job, S.paused, reason="worker lost while pausing", heartbeat_age_s=age)
    else:
        states.transition(session, job, S.lost, reason=reason, heartbeat_age_s=age, worker=job.worker)


def worker_restarted(session: Session, *, worker: str) -> list[str]:
    """A worker node that starts holds no job yet: the active attempts the database gives its name (the job's
    worker, or a seat of a job on several nodes) belonged to its previous life, which ended without saying so
    (kill -9, a crashed host, the whole `rlad up` tree killed). They are lost now, not after the heartbeat
    timeout; the reaper's next pass queues them again. Worker names must be unique, as Celery requires.
    Returns the ids of the jobs lost (or cancelled / paused as their owners asked)."""
    now = utcnow()
    seated = select(NodeClaim.job_id).where(
        NodeClaim.job_id == Job.id, NodeClaim.attempt == Job.attempt, NodeClaim.worker == worker
    )
    held = session.scalars(
        select(Job)
        .where(Job.status.in_(states.ACTIVE), (Job.worker == worker) | seated.exists())
        .with_for_update(skip_locked=True)
    ).all()
    for job in held:
        _lose(session, job, "its worker restarted", now)
    return [job.id for job in held]


def reap(
    session: Session,
    *,
    heartbeat_timeout_s: float,
    redispatch_after_s: float = 600.0,
    broker_forgot: bool = False,
    now: datetime | None = None,
) -> list[Job]:
    """Active jobs with a stale heartbeat -> lost; lost jobs -> queued again (the next attempt resumes from
    the last checkpoint) while attempts remain, else failed; queued jobs not claimed `redispatch_after_s`
    after their dispatch are sent again, and every queued job when the broker lost its messages
    (`broker_forgot`). Returns the jobs to dispatch."""
    now = now or utcnow()
    stale_before = now - timedelta(seconds=heartbeat_timeout_s)
    # a job on several nodes is stale too when one node stopped stamping its seat (store.gangs)
    lost_node = gangs.stale_seats(session, stale_before=stale_before)
    stale = session.scalars(
        select(Job)
        .where(Job.status.in_(states.ACTIVE), (Job.heartbeat_at < stale_before) | Job.id.in_(lost_node))
        .with_for_update(skip_locked=True)
    )
    for job in stale:
        reason = "heartbeat is stale" if job.id not in lost_node else "a node's seat heartbeat is stale"
        _lose(session, job, reason, now)
    session.flush()
    requeued = []
    for job in session.scalars(select(Job).where(Job.status == S.lost).with_for_update(skip_locked=True)):
        # attempts that a stopping worker released (or that a database outage outlived) are not losses
        losses = lost_count(session, job_id=job.id)
        if losses < job.max_attempts:
            states.transition(session, job, S.queued, reason="retry after lost", next_attempt=job.attempt + 1)
            job.worker, job.dispatched_at = None, now
            requeued.append(job)
        else:
            job.error_code = "lost"
            job.error_message = f"the job was lost {losses} times (max_attempts={job.max_attempts})"
            states.transition(session, job, S.failed, code=job.error_code, message=job.error_message)
    # a queued job whose message never arrived (broker down at submit, a broker restart) is sent again
    requeued_ids = [job.id for job in requeued]
    undelivered_before = now + timedelta(seconds=1) if broker_forgot else now - timedelta(seconds=redispatch_after_s)
    for job in session.scalars(
        select(Job)
        .where(Job.status == S.queued, Job.dispatched_at < undelivered_before, Job.id.not_in(requeued_ids))
        .with_for_update(skip_locked=True)
    ):
        job.dispatched_at = now
        requeued.append(job)
    return requeued
