"""The shared queues and the workers that serve them: a team sees its own jobs per queue, the cluster's load only
as totals, and the workers without others' job ids; and the team's usage against its limits."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CallerDep, ReadSessionDep, SettingsDep
from api.responses import E401
from api.schemas import QueueDepth, QueueState, QueueTotals, UsagePublic, WorkerPublic
from store import usage as usage_store
from store import workers as worker_store

router = APIRouter(prefix="/v1", tags=["queue"])


@router.get("/queue", response_model=QueueState, responses={**E401})
def queue_state(session: ReadSessionDep, caller: CallerDep, settings: SettingsDep) -> QueueState:
    """The caller's team's jobs waiting and running per queue, the cluster's totals (all teams), and the workers
    with their heartbeats and the job each runs (its id only when the job is the caller's team's)."""
    depths = worker_store.queue_depths(session, team_id=caller.team_id)
    depths.setdefault(settings.default_queue, {"queued": 0, "running": 0})  # shown even when idle
    workers = worker_store.list_workers(session, timeout_s=settings.heartbeat_timeout_s)
    return QueueState(
        queues=[QueueDepth(queue=q, **d) for q, d in sorted(depths.items())],
        totals=QueueTotals(**worker_store.cluster_totals(session)),
        workers=[
            WorkerPublic(
                name=w.name,
                queues=w.queues,
                started_at=w.started_at,
                heartbeat_age_s=w.heartbeat_age_s,
                alive=w.alive,
                busy=w.job_id is not None,
                job_id=w.job_id if w.job_team_id == caller.team_id else None,
            )
            for w in workers
        ],
    )


@router.get("/usage", response_model=UsagePublic, responses={**E401})
def usage(session: ReadSessionDep, caller: CallerDep, settings: SettingsDep) -> UsagePublic:
    """The team's jobs and storage against its limits, and the limits on each request (set by the operator:
    docs/operations.md, "Limits")."""
    u = usage_store.team_usage(session, team_id=caller.team_id)
    return UsagePublic(
        active_jobs=u.active_jobs,
        max_active_jobs=settings.max_active_jobs_per_team,
        checkpoints=u.checkpoints,
        checkpoint_bytes=u.checkpoint_bytes,
        datasets=u.datasets,
        dataset_bytes=u.dataset_bytes,
        storage_bytes=u.storage_bytes,
        max_storage_bytes=settings.max_storage_bytes_per_team or None,
        max_rollouts_per_job=settings.max_rollouts_per_job,
        max_upload_bytes=settings.max_upload_bytes,
        rate_limit_per_s=settings.rate_limit_per_s or None,
        rate_limit_burst=settings.rate_limit_burst,
    )
