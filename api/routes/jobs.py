"""Jobs: submit, list, read, cancel, events."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Query, Request, Response

from api.deps import (
    JOB_ID_PATTERN,
    CallerDep,
    JobId,
    OwnedJob,
    QueryText,
    ReadSessionDep,
    SessionDep,
    SettingsDep,
    audited,
    json_body,
)
from api.job_cache import job_cache
from api.presenters import job_public
from api.responses import E400, E401, E403, E404, E409, E413, E415, E422, E429
from api.schemas import SPEC_SCHEMA, ErrorBody, EventList, EventPublic, JobList, JobPublic
from store import jobs as job_store
from store.dispatch import dispatch_job
from store.errors import InvalidSpec
from store.gangs import job_resources
from store.models import Job, JobStatus
from store.settings import get_settings

log = logging.getLogger("rlad.api")
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _dispatch(job: Job) -> None:
    """Send a committed queued job's id to its queue (one message per node it needs)."""
    try:
        dispatch_job(job.id, job.queue, copies=job_resources(job.spec_resolved)[0])
    except Exception:  # the job is safe in the database; the reaper sends undelivered jobs again
        log.exception("job %s: could not reach the broker; it stays queued", job.id)


def _nul_field(value: Any, path: str = "") -> str | None:
    """The first field whose name or text holds a NUL character (PostgreSQL cannot store one), else None."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        sub = f"{path}.{k}" if path else str(k)
        if "\x00" in str(k):
            return sub
        found = _nul_field(v, sub)
        if found is not None:
            return found
    return None


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    responses={
        200: {"model": JobPublic, "description": "the job this Idempotency-Key already created"},
        409: {"model": ErrorBody, "description": "Idempotency-Key reused with a different body"},
        **E400,
        **E401,
        **E403,
        **E413,
        **E415,
        **E422,
        **E429,
    },
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": SPEC_SCHEMA}}}},
    dependencies=[Depends(json_body)],
)
def submit(
    session: SessionDep,
    caller: CallerDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
    spec: Annotated[dict[str, Any], Body()],
    idempotency_key: Annotated[
        str | None, Header(max_length=200, pattern=r"^[\x20-\x7e]+$", description="same key + same body = same job")
    ] = None,
    webhook_url: Annotated[
        str | None,
        Query(
            max_length=2000,
            description="POSTed the job, signed with the team's webhook secret, when it ends (store.webhooks)",
        ),
    ] = None,
) -> JobPublic:
    """Queue a distillation job. The body is the job spec (rlad_core's TrainConfig, as JSON). A team has at
    most `RLAD_MAX_ACTIVE_JOBS_PER_TEAM` jobs queued or running at once (429 beyond it)."""
    nul = _nul_field(spec)
    if nul is not None:
        raise InvalidSpec([(nul, "contains a NUL character; fix: remove it")])
    job, created = job_store.submit_job(
        session,
        team_id=caller.team_id,
        spec=spec,
        idempotency_key=idempotency_key,
        queue=settings.resolved_job_queues,
        max_attempts=settings.max_attempts,
        max_active=settings.max_active_jobs_per_team,
        webhook_url=webhook_url,
    )
    if not created:
        response.status_code = 200
        return job_public(session, job)
    audited(session, caller, request, "job.submit", job.id, method=job.method, name=job.name, steps=job.total_steps)
    # commit before the message leaves: a worker must find the row it is handed
    session.commit()
    _dispatch(job)
    log.info("job %s: submitted by team %s (%s, %d steps)", job.id, caller.team_name, job.method, job.total_steps)
    return job_public(session, job)


@router.get("", response_model=JobList, responses={**E401, **E422})
def list_jobs(
    session: ReadSessionDep,
    caller: CallerDep,
    settings: SettingsDep,
    after: Annotated[
        str | None,
        Query(max_length=64, pattern=JOB_ID_PATTERN, description="`next_after` of the previous page (a job id)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    status: Annotated[list[JobStatus] | None, Query(description="filter; repeat for several")] = None,
    method: Annotated[list[QueryText] | None, Query(description="filter; repeat for several")] = None,
) -> JobList:
    """The team's jobs, newest first, a page at a time."""
    rows, has_more = job_store.list_jobs(
        session,
        team_id=caller.team_id,
        after=after,
        limit=min(limit, settings.max_page_size),
        status=status,
        method=method,
    )
    return JobList(
        items=[job_public(session, j) for j in rows],
        has_more=has_more,
        next_after=rows[-1].id if has_more and rows else None,
    )


@router.get("/{job_id}", response_model=JobPublic, responses={**E401, **E404})
async def get_job(job_id: JobId, caller: CallerDep) -> Response:
    """A job's status and progress (at most `RLAD_JOB_CACHE_TTL_S` old, default 1 s)."""
    # the hot path of every poller: async, no sync dependency (each costs a thread hop), no re-validation
    body = job_cache.get(job_id, caller.team_id)
    if body is None:
        body = await job_cache.load(job_id, caller.team_id, get_settings().job_cache_ttl_s)
    return Response(body, media_type="application/json")


@router.post("/{job_id}/cancel", status_code=202, response_model=JobPublic, responses={**E401, **E403, **E404})
def cancel(job_id: JobId, session: SessionDep, caller: CallerDep, request: Request) -> JobPublic:
    """Queued: cancelled at once. Running: `cancelling`, then `cancelled` once the trainer has saved a final
    checkpoint and stopped. Terminal: unchanged (cancel is idempotent)."""
    job = job_store.request_cancel(session, team_id=caller.team_id, job_id=job_id)
    audited(session, caller, request, "job.cancel", job.id, status=job.status.value)
    job_cache.drop(job_id)
    log.info("job %s: cancel requested by team %s -> %s", job.id, caller.team_name, job.status.value)
    return job_public(session, job)


@router.post("/{job_id}/pause", status_code=202, response_model=JobPublic, responses={**E401, **E403, **E404, **E409})
def pause(job_id: JobId, session: SessionDep, caller: CallerDep, request: Request) -> JobPublic:
    """Queued: paused at once. Running: `pausing`, then `paused` once the trainer has saved a checkpoint and
    stopped (the worker is free). Pausing or paused: unchanged. Otherwise 409."""
    job, changed = job_store.request_pause(session, team_id=caller.team_id, job_id=job_id)
    if changed:
        audited(session, caller, request, "job.pause", job.id, status=job.status.value)
    job_cache.drop(job_id)
    return job_public(session, job)


@router.post("/{job_id}/resume", status_code=202, response_model=JobPublic, responses={**E401, **E403, **E404, **E409})
def resume(job_id: JobId, session: SessionDep, caller: CallerDep, request: Request) -> JobPublic:
    """Paused: queued again; the next attempt resumes from the last checkpoint. Queued or running: unchanged.
    Pausing (its trainer has not stopped yet) or finished: 409."""
    job, queued = job_store.request_resume(session, team_id=caller.team_id, job_id=job_id)
    if queued:
        audited(session, caller, request, "job.resume", job.id, next_attempt=job.attempt + 1)
        session.commit()  # before the message leaves: a worker must find the job queued
        _dispatch(job)
    job_cache.drop(job_id)
    return job_public(session, job)


@router.get("/{job_id}/events", response_model=EventList, responses={**E401, **E404, **E422})
def events(
    job: OwnedJob,
    session: ReadSessionDep,
    after: Annotated[int | None, Query(ge=0, description="only events with a larger id")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> EventList:
    rows = job_store.list_events(session, job_id=job.id, after=after, limit=limit)
    return EventList(
        items=[EventPublic(id=e.id, kind=e.kind, attempt=e.attempt, data=e.data, created_at=e.created_at) for e in rows]
    )
