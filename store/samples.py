"""Rollouts kept for people to read (the dashboard's samples panel): the newest `KEEP` per job."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from store.models import JobSample

KEEP = 200
MAX_TEXT = 8000  # characters of a prompt or completion kept (a runaway completion is not a page of text)


def write_samples(session: Session, *, job_id: str, step: int, rows: Sequence[Mapping[str, Any]]) -> None:
    """Add `rows` ({"prompt", "completion", "reward", "correct", "eval"}) and drop all but the newest `KEEP`."""
    if not rows:
        return
    session.add_all(
        JobSample(
            job_id=job_id,
            step=step,
            eval=bool(r.get("eval", False)),
            prompt=str(r.get("prompt", ""))[:MAX_TEXT],
            completion=str(r.get("completion", ""))[:MAX_TEXT],
            reward=_float(r.get("reward")),
            correct=_bool(r.get("correct")),
        )
        for r in rows
    )
    session.flush()
    oldest_kept = session.scalar(
        select(JobSample.id).where(JobSample.job_id == job_id).order_by(JobSample.id.desc()).offset(KEEP - 1).limit(1)
    )
    if oldest_kept is not None:
        session.execute(delete(JobSample).where(JobSample.job_id == job_id, JobSample.id < oldest_kept))


def latest_samples(session: Session, *, job_id: str, limit: int = 20, eval: bool | None = None) -> list[JobSample]:
    """The newest samples, newest first; `eval` filters to evaluation (True) or training (False) rollouts."""
    q = select(JobSample).where(JobSample.job_id == job_id)
    if eval is not None:
        q = q.where(JobSample.eval == eval)
    return list(session.scalars(q.order_by(JobSample.id.desc()).limit(limit)))


def _float(v: Any) -> float | None:
    try:
        return float(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def _bool(v: Any) -> bool | None:
    return bool(v) if v is not None else None
