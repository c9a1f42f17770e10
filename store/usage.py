"""A team's usage against its limits (GET /v1/usage), and the storage check that new jobs and uploads pass.

Storage counts the bytes of the team's checkpoints (their rows: what the result store keeps) and datasets. At
or over `max_storage_bytes_per_team` a new job or upload is refused (`QuotaExceeded`, 429, nothing stored);
jobs already running keep checkpointing, so a team can end a little over its limit, never far (a job's
`keep_checkpoints` bounds what it keeps).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from store.errors import QuotaExceeded
from store.models import Checkpoint, Dataset, Job, JobStatus
from store.states import ACTIVE


def count_active_jobs(session: Session, *, team_id: str) -> int:
    """The team's jobs that hold or wait for a worker: queued, starting, running, cancelling (the quota)."""
    n = session.scalar(
        select(func.count()).select_from(Job).where(Job.team_id == team_id, Job.status.in_({JobStatus.queued, *ACTIVE}))
    )
    return int(n or 0)


@dataclass(frozen=True)
class Usage:
    active_jobs: int  # queued, starting, running or cancelling (the max_active_jobs_per_team quota)
    checkpoints: int
    checkpoint_bytes: int
    datasets: int
    dataset_bytes: int

    @property
    def storage_bytes(self) -> int:
        return self.checkpoint_bytes + self.dataset_bytes


def team_usage(session: Session, *, team_id: str) -> Usage:
    ckpts, ckpt_bytes = session.execute(
        select(func.count(Checkpoint.id), func.coalesce(func.sum(Checkpoint.bytes), 0))
        .join(Job, Job.id == Checkpoint.job_id)
        .where(Job.team_id == team_id)
    ).one()
    sets, set_bytes = session.execute(
        select(func.count(Dataset.id), func.coalesce(func.sum(Dataset.bytes), 0)).where(Dataset.team_id == team_id)
    ).one()
    return Usage(count_active_jobs(session, team_id=team_id), int(ckpts), int(ckpt_bytes), int(sets), int(set_bytes))


def check_storage(session: Session, *, team_id: str, limit: int, adding: int = 0) -> None:
    """`QuotaExceeded` naming the limit when the team's storage (plus `adding` bytes) would exceed `limit`
    (0: no limit). A new job adds nothing yet: it is refused once the team is at its limit."""
    if limit <= 0:
        return
    used = team_usage(session, team_id=team_id).storage_bytes
    if used + adding > limit or (adding == 0 and used >= limit):
        raise QuotaExceeded(
            limit,
            f"the team stores {used} bytes of checkpoints and datasets"
            + (f" and this upload would add {adding}" if adding else "")
            + f"; its limit is {limit} bytes (max_storage_bytes_per_team={limit}); fix: delete old jobs' "
            "checkpoints (keep_checkpoints) or datasets, or ask the operator to raise the limit",
            setting="max_storage_bytes_per_team",
        )
