"""Gang scheduling of a job on several nodes: M workers claim one attempt together, or none of them runs it.

A job asking for `resources.nodes: M` is sent to its queue as M messages. Each worker that takes one claims a
seat (`NodeClaim`) in the job's next attempt; the first seat sets the deadline (`gang_wait_s`) and its address
and port become the rendezvous endpoint. The claim that fills the M-th seat moves the job queued -> starting
(attempt + 1) in the same transaction, and every seated worker starts `torchrun --nnodes M` against that
endpoint. Claims not completed by the deadline are released: the job stays queued and each worker that held a
seat sends its message again, so M messages keep circulating until M workers are free at once.

While the attempt runs each node stamps its seat's heartbeat; the reaper treats a stale seat like a stale job
heartbeat (the node is gone: the attempt is lost and the job resumes from its last checkpoint).

Every function takes the job's row lock first, so claims of one job are serialised.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from store import states
from store.models import Job, JobStatus, NodeClaim, utcnow

S = JobStatus


def job_resources(spec_resolved: dict[str, Any]) -> tuple[int, int]:
    """(nodes, processes per node) of a resolved spec (specs stored before `resources` existed: one process)."""
    r = spec_resolved.get("resources") or {}
    return int(r.get("nodes", 1)), int(r.get("gpus_per_node", 1))


@dataclass(frozen=True)
class Gang:
    """This worker's view of the gang it sits in."""

    state: str  # forming | formed | gone (released, expired, or the job went on without this seat)
    attempt: int
    nodes: int
    node_rank: int = -1
    endpoint: str = ""  # host:port of the rendezvous (the first seat's)
    workers: tuple[str, ...] = ()
    deadline: datetime | None = None


def _locked_job(session: Session, job_id: str) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id).with_for_update())


def _seats(session: Session, job_id: str, attempt: int) -> list[NodeClaim]:
    return list(
        session.scalars(
            select(NodeClaim).where(NodeClaim.job_id == job_id, NodeClaim.attempt == attempt).order_by(NodeClaim.seat)
        )
    )


def join(
    session: Session, *, job_id: str, worker: str, address: str, port: int, wait_s: float, now: datetime | None = None
) -> Gang | None:
    """Claim a seat in the job's next attempt; None when the job is not queued (cancelled, already running).

    The seat that completes the gang moves the job to `starting` (event `claimed` naming every node)."""
    now = now or utcnow()
    job = _locked_job(session, job_id)
    if job is None or job.status != S.queued:
        return None
    nodes, _ = job_resources(job.spec_resolved)
    attempt = job.attempt + 1
    session.execute(delete(NodeClaim).where(NodeClaim.job_id == job_id, NodeClaim.attempt != attempt))  # old gangs
    seats = _seats(session, job_id, attempt)
    if seats and seats[0].deadline < now:  # a gathering nobody completed in time: start a new one
        session.execute(delete(NodeClaim).where(NodeClaim.job_id == job_id))
        seats = []
    mine = next((c for c in seats if c.worker == worker), None)
    if mine is None:
        if len(seats) >= nodes:
            return None
        deadline = seats[0].deadline if seats else now + timedelta(seconds=wait_s)
        mine = NodeClaim(
            job_id=job_id,
            attempt=attempt,
            seat=(seats[-1].seat + 1) if seats else 0,
            worker=worker,
            address=address,
            port=port,
            deadline=deadline,
            heartbeat_at=now,
        )
        session.add(mine)
        session.flush()
        seats.append(mine)
    if len(seats) == nodes:
        job.attempt = attempt
        job.worker, job.heartbeat_at, job.started_at = seats[0].worker, now, job.started_at or now
        states.transition(
            session, job, S.starting, worker=seats[0].worker, attempt=attempt, nodes=[c.worker for c in seats]
        )
    return _view(job, seats, worker, attempt, nodes)


def _view(job: Job, seats: list[NodeClaim], worker: str, attempt: int, nodes: int) -> Gang:
    rank = next((i for i, c in enumerate(seats) if c.worker == worker), -1)
    if rank < 0:
        return Gang("gone", attempt, nodes)
    workers = tuple(c.worker for c in seats)
    endpoint = f"{seats[0].address}:{seats[0].port}"
    if job.attempt == attempt and job.status in states.ACTIVE and len(seats) == nodes:
        return Gang("formed", attempt, nodes, rank, endpoint, workers, seats[0].deadline)
    if job.status == S.queued and job.attempt == attempt - 1:
        return Gang("forming", attempt, nodes, rank, endpoint, workers, seats[0].deadline)
    return Gang("gone", attempt, nodes)


def gang_of(session: Session, *, job_id: str, attempt: int, worker: str, now: datetime | None = None) -> Gang:
    """Where the gathering this worker sits in stands; an expired one reads `gone`."""
    now = now or utcnow()
    job = session.get(Job, job_id)
    if job is None:
        return Gang("gone", attempt, 0)
    nodes, _ = job_resources(job.spec_resolved)
    seats = _seats(session, job_id, attempt)
    gang = _view(job, seats, worker, attempt, nodes)
    if gang.state == "forming" and gang.deadline is not None and gang.deadline < now:
        return Gang("gone", attempt, nodes)
    return gang


def leave(session: Session, *, job_id: str, attempt: int, worker: str) -> bool:
    """Give up this worker's seat in a gathering that has not formed (the worker stops, or the deadline
    passed: then the whole gathering is released). True when the job is still queued: the caller sends the
    message it took back to the queue."""
    job = _locked_job(session, job_id)
    if job is None or job.status != S.queued or job.attempt != attempt - 1:
        return False
    seats = _seats(session, job_id, attempt)
    if seats and seats[0].deadline < utcnow():
        session.execute(delete(NodeClaim).where(NodeClaim.job_id == job_id, NodeClaim.attempt == attempt))
    else:
        session.execute(
            delete(NodeClaim).where(
                NodeClaim.job_id == job_id, NodeClaim.attempt == attempt, NodeClaim.worker == worker
            )
        )
    job.dispatched_at = utcnow()
    return True


def stamp(session: Session, *, job_id: str, attempt: int, worker: str) -> None:
    """A node's heartbeat for its seat in a running attempt."""
    session.execute(
        update(NodeClaim)
        .where(NodeClaim.job_id == job_id, NodeClaim.attempt == attempt, NodeClaim.worker == worker)
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def stale_seats(session: Session, *, stale_before: datetime) -> set[str]:
    """Ids of the active jobs one of whose nodes stopped stamping its seat (the reaper loses them)."""
    rows = session.execute(
        select(Job.id)
        .join(NodeClaim, (NodeClaim.job_id == Job.id) & (NodeClaim.attempt == Job.attempt))
        .where(Job.status.in_(states.ACTIVE), NodeClaim.heartbeat_at < stale_before)
    )
    return {job_id for (job_id,) in rows}
