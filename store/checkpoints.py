"""Checkpoint rows: one per (job, step), written after the checkpoint directory is complete."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from store.errors import NotFound
from store.models import Checkpoint


def record_checkpoint(
    session: Session,
    *,
    job_id: str,
    step: int,
    kind: str,
    location: str,
    bytes: int,
    sha256: str,
    metrics: dict[str, Any],
) -> None:
    """Insert or replace (a resumed attempt may write the same step again)."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    values = {
        "job_id": job_id,
        "step": step,
        "kind": kind,
        "location": location,
        "bytes": bytes,
        "sha256": sha256,
        "metrics": metrics,
    }
    stmt = insert(Checkpoint).values(**values)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["job_id", "step"], set_={k: stmt.excluded[k] for k in values if k not in ("job_id", "step")}
        )
    )


def forget_checkpoints(session: Session, *, job_id: str, steps: list[int]) -> None:
    """Rows of checkpoints the trainer pruned (keep_checkpoints)."""
    if steps:
        session.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.step.in_(steps)))


def list_checkpoints(session: Session, *, job_id: str) -> list[Checkpoint]:
    return list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)))


def get_checkpoint(session: Session, *, job_id: str, step: int | None = None) -> Checkpoint:
    """The checkpoint at `step`, or the latest one."""
    q = select(Checkpoint).where(Checkpoint.job_id == job_id)
    q = q.where(Checkpoint.step == step) if step is not None else q.order_by(Checkpoint.step.desc()).limit(1)
    ckpt = session.scalar(q)
    if ckpt is None:
        raise NotFound("checkpoint", f"{job_id}@{'latest' if step is None else step}")
    return ckpt
