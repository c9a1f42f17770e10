"""The workers registry and queue depths (the dashboard's queue page).

Each Celery worker node writes its row every heartbeat interval while it runs (`workers.celery_app`) and
deletes it when it shuts down; a node that died without saying so shows as not alive once its heartbeat
is older than the job heartbeat timeout."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from store import states
from store.models import Job, JobStatus, Worker, utcnow


def worker_heartbeat(session: Session, *, name: str, queues: list[str], pid: int, devices: int = 0) -> None:
    row = session.get(Worker, name)
    if row is None or row.pid != pid:  # new, or the node restarted under the same name
        session.merge(
            Worker(
                name=name, queues=",".join(queues), pid=pid, devices=devices, started_at=utcnow(), heartbeat_at=utcnow()
            )
        )
    else:
        row.heartbeat_at = utcnow()
        row.queues = ",".join(queues)
        row.devices = devices


def queue_devices(session: Session, *, queue: str, timeout_s: float) -> list[int]:
    """The CUDA device counts of the live workers that serve `queue` (empty: none is live, nothing is known)."""
    since = utcnow() - timedelta(seconds=timeout_s)
    rows = session.execute(select(Worker.queues, Worker.devices).where(Worker.heartbeat_at >= since))
    return [devices for queues, devices in rows if queue in queues.split(",")]


def worker_gone(session: Session, *, name: str, pid: int) -> None:
    session.execute(delete(Worker).where(Worker.name == name, Worker.pid == pid))


@dataclass(frozen=True)
class WorkerState:
    name: str
    queues: list[str]
    started_at: datetime
    heartbeat_age_s: float
    alive: bool
    job_id: str | None
    job_team_id: str | None


def list_workers(session: Session, *, timeout_s: float, forget_after_s: float = 3600.0) -> list[WorkerState]:
    """Workers seen in the last `forget_after_s`, with the job each runs (a job of an active status whose
    `worker` is the node)."""
    now = utcnow()
    rows = session.scalars(
        select(Worker).where(Worker.heartbeat_at >= now - timedelta(seconds=forget_after_s)).order_by(Worker.name)
    ).all()
    running = {
        w: (j, t)
        for j, t, w in session.execute(
            select(Job.id, Job.team_id, Job.worker).where(Job.status.in_(states.ACTIVE), Job.worker.is_not(None))
        )
    }
    out = []
    for w in rows:
        age = (now - w.heartbeat_at).total_seconds()
        job_id, team_id = running.get(w.name, (None, None))
        out.append(WorkerState(w.name, w.queues.split(","), w.started_at, age, age <= timeout_s, job_id, team_id))
    return out


def queue_depths(session: Session, *, team_id: str | None = None) -> dict[str, dict[str, int]]:
    """Per queue: jobs waiting (`queued`) and held by a worker (starting, running, cancelling); only
    `team_id`'s jobs when given."""
    out: dict[str, dict[str, int]] = {}
    q = select(Job.queue, Job.status, func.count()).where(Job.status.in_({JobStatus.queued, *states.ACTIVE}))
    if team_id is not None:
        q = q.where(Job.team_id == team_id)
    q = q.group_by(Job.queue, Job.status)
    for queue, status, n in session.execute(q):
        d = out.setdefault(queue, {"queued": 0, "running": 0})
        d["queued" if status == JobStatus.queued else "running"] += n
    return out


def cluster_totals(session: Session) -> dict[str, int]:
    """Jobs waiting and held by a worker over every queue and team (no per-team or per-queue detail)."""
    totals = {"queued": 0, "running": 0}
    for d in queue_depths(session).values():
        totals["queued"] += d["queued"]
        totals["running"] += d["running"]
    return totals
