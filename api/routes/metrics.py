"""Metrics of a job: a downsampled read, and a live tail as server-sent events."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.deps import OwnedJob, QueryText, ReadSessionDep, SettingsDep
from api.responses import E401, E404, E422
from api.schemas import LatestMetrics, LatestPoint, MetricSeries, MetricsPublic, SampleList, SamplePublic
from store import jobs as job_store
from store import metrics as metric_store
from store import samples as sample_store
from store import states
from store.db import session_scope

router = APIRouter(prefix="/v1/jobs", tags=["metrics"])
TAIL_POINTS = 2000  # a stream opened without a cursor starts with about this many newest points, not the history
TAIL_SHARE_S = 1.0  # streams of a job opened within this many seconds of each other share one read of that tail
MetricRow = tuple[str, int, float | None, float]  # key, step, value, time written


def _format(rows: list[MetricRow], cursor: float) -> tuple[str, float]:
    """Server-sent events for `rows` (one `metrics` event per step) and the cursor after them."""
    by_step: dict[int, dict[str, float | None]] = {}
    for key, step, value, t in rows:
        by_step.setdefault(step, {})[key] = value
        cursor = max(cursor, t)
    text = "".join(
        f"id: {cursor!r}\nevent: metrics\ndata: {json.dumps({'step': step, 'values': by_step[step]})}\n\n"
        for step in sorted(by_step)
    )
    return text, cursor


def _read_tail(job_id: str) -> tuple[str, float]:
    with session_scope() as s:
        start = metric_store.tail_cursor(s, job_id=job_id, points=TAIL_POINTS)
        return _format(metric_store.metrics_after(s, job_id=job_id, after_time=start), start)


_tails: dict[str, tuple[float, asyncio.Task[tuple[str, float]]]] = {}  # job id -> (read at, the read); this process


async def _initial_tail(job_id: str) -> tuple[str, float]:
    """The newest points of a job as events, and the cursor after them. A dashboard opened by many people (or
    reopened) starts many streams at once: each reads and formats the same ~2,000 points, which on a busy API
    process delays every other request; streams opened within TAIL_SHARE_S share one read instead. A stream
    that joins a read up to TAIL_SHARE_S old gets the rest from its own first poll (the cursor is exact)."""
    now = time.monotonic()
    for key in [k for k, (at, _) in _tails.items() if now - at > TAIL_SHARE_S]:
        del _tails[key]
    shared = _tails.get(job_id)
    if shared is None or shared[1].get_loop() is not asyncio.get_running_loop():
        shared = _tails[job_id] = (now, asyncio.ensure_future(run_in_threadpool(_read_tail, job_id)))
    read = shared[1]
    try:
        return await asyncio.shield(read)  # one stream going away does not cancel the others' read
    except Exception:
        if _tails.get(job_id) is shared:
            del _tails[job_id]  # a failed read (the database away) is not shared with the next stream
        raise


@router.get("/{job_id}/metrics", response_model=MetricsPublic, responses={**E401, **E404, **E422})
def read(
    job: OwnedJob,
    session: ReadSessionDep,
    settings: SettingsDep,
    key: Annotated[list[QueryText] | None, Query(description="metric keys (repeat); default: all")] = None,
    step_min: Annotated[int | None, Query(ge=0)] = None,
    step_max: Annotated[int | None, Query(ge=0)] = None,
    max_points: Annotated[int, Query(ge=1, le=10_000, description="at most this many points per key")] = 1000,
) -> MetricsPublic:
    """Series per key. A range longer than `max_points` steps is cut into aligned buckets of `bucket` steps,
    each shown by its first point."""
    max_points = min(max_points, settings.max_metric_points)
    keys = metric_store.metric_keys(session, job_id=job.id)
    last = job.last_step if step_max is None and job.last_step else None
    data = metric_store.read_metrics(
        session,
        job_id=job.id,
        keys=key or keys,
        step_min=step_min,
        step_max=step_max,
        max_points=max_points,
        last_step=last,
    )
    series = [
        MetricSeries(key=k, steps=[p.step for p in pts], values=[p.value for p in pts], times=[p.time for p in pts])
        for k, pts in data.points.items()
    ]
    return MetricsPublic(job_id=job.id, keys=keys, series=series, downsampled=data.bucket > 1, bucket=data.bucket)


@router.get("/{job_id}/metrics/latest", response_model=LatestMetrics, responses={**E401, **E404, **E422})
def latest(
    job: OwnedJob,
    session: ReadSessionDep,
    key: Annotated[list[QueryText] | None, Query(description="metric keys (repeat); default: all")] = None,
) -> LatestMetrics:
    """The newest value of each key (progress bars, dashboards' summary tiles)."""
    points = metric_store.latest_points(session, job_id=job.id, keys=key)
    return LatestMetrics(
        job_id=job.id, latest={k: LatestPoint(step=p.step, value=p.value, time=p.time) for k, p in points.items()}
    )


@router.get("/{job_id}/samples", response_model=SampleList, responses={**E401, **E404, **E422})
def samples(
    job: OwnedJob,
    session: ReadSessionDep,
    limit: Annotated[int, Query(ge=1, le=sample_store.KEEP)] = 20,
    eval: Annotated[bool | None, Query(description="true: evaluation samples only; false: training only")] = None,
) -> SampleList:
    """The newest rollouts (prompt, completion, reward), newest first: what the student writes."""
    rows = sample_store.latest_samples(session, job_id=job.id, limit=limit, eval=eval)
    return SampleList(
        items=[
            SamplePublic(
                step=r.step,
                eval=r.eval,
                prompt=r.prompt,
                completion=r.completion,
                reward=r.reward,
                correct=r.correct,
                created_at=r.created_at,
            )
            for r in rows
        ]
    )


@router.get(
    "/{job_id}/metrics/stream",
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`event: metrics` with {step, values} per step as they are written; `event: end` "
            "with the final status when the job is terminal",
        },
        **E401,
        **E404,
        **E422,
    },
)
async def stream(
    job: OwnedJob,
    request: Request,
    session: ReadSessionDep,
    since: Annotated[
        float | None,
        Query(
            ge=0,
            description="unix time; only points written later (0: the whole "
            "history; default: the newest points, see above)",
        ),
    ] = None,
    poll_s: Annotated[float, Query(ge=0.1, le=10)] = 1.0,
) -> StreamingResponse:
    """Live tail of a job's metrics (server-sent events). Opened without a cursor it starts with the newest
    points only (about the last 2,000 written), not the whole history: read the history with
    `GET /metrics`, then tail from the newest `times` value it returned with `since`. `since` and
    `Last-Event-ID` (reconnects) resume exactly: every point written after that time."""
    job_id = job.id
    last_id = request.headers.get("last-event-id")
    opening = ""  # events sent first: the shared initial tail of a stream opened without a cursor
    if last_id and last_id.replace(".", "", 1).isdigit():
        cursor = float(last_id)
    elif since is not None:
        cursor = since
    else:
        # give the request's connection back first: streams opened together all wait on one read, which needs a
        # connection of its own; had they kept theirs, as many streams as the pool holds would starve it
        session.close()
        opening, cursor = await _initial_tail(job_id)

    def poll(after: float) -> tuple[list[MetricRow], bool, str]:
        with session_scope() as s:
            # the status first: metrics are written before a job ends, so once it reads terminal every row is
            # already visible to the read after it, and `terminal and no rows` means the stream has them all
            status = job_store.status_of(s, job_id=job_id)
            rows = metric_store.metrics_after(s, job_id=job_id, after_time=after)
            return rows, states.is_terminal(status), status.value

    async def events() -> AsyncIterator[str]:
        nonlocal cursor
        yield ": stream open\n\n" + opening
        while True:
            rows, terminal, status = await run_in_threadpool(poll, cursor)
            text, cursor = _format(rows, cursor)
            if text:
                yield text
            if terminal and not rows:
                yield f"event: end\ndata: {json.dumps({'status': status})}\n\n"
                return
            if await request.is_disconnected():
                return
            if not rows:
                yield ": keep-alive\n\n"
                await asyncio.sleep(poll_s)

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
