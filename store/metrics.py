"""Metrics: batched idempotent writes (upsert on (job, key, step)) and reads with server-side downsampling."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import and_, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from store.models import Metric


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def write_metrics(session: Session, *, job_id: str, rows: Iterable[tuple[int, Mapping[str, float | None]]],
                  at: float | None = None) -> int:
    """Upsert `(step, {key: value})` rows; a repeated (job, key, step) replaces the old value. Returns the count."""
    now = time.time() if at is None else at
    values = [{"job_id": job_id, "step": step, "key": key, "value": _finite(v), "time": now}
              for step, kv in rows for key, v in kv.items()]
    if not values:
        return 0
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    # SQLite allows at most 32766 bound variables per statement; 5 per row
    for i in range(0, len(values), 5000):
        stmt = insert(Metric).values(values[i:i + 5000])
        stmt = stmt.on_conflict_do_update(index_elements=["job_id", "key", "step"],
                                          set_={"value": stmt.excluded.value, "time": stmt.excluded.time})
        session.execute(stmt)
    return len(values)


@dataclass(frozen=True)
class Point:
    step: int
    value: float | None
    time: float


def metric_keys(session: Session, *, job_id: str) -> list[str]:
    return list(session.scalars(select(Metric.key).where(Metric.job_id == job_id).distinct().order_by(Metric.key)))


def read_metrics(session: Session, *, job_id: str, keys: list[str] | None = None, step_min: int | None = None,
                 step_max: int | None = None, max_points: int = 1000,
                 last_step: int | None = None) -> dict[str, list[Point]]:
    """Points per key in the step range, at most `max_points` per key.

    Longer series are averaged in equal-width step buckets (one GROUP BY over the range); each bucket
    reports its last step, the mean of its finite values, and its latest time. `last_step` (the job's
    progress) bounds the range without a scan."""
    cond = [Metric.job_id == job_id]
    if keys:
        cond.append(Metric.key.in_(keys))
    if step_min is not None:
        cond.append(Metric.step >= step_min)
    if step_max is not None:
        cond.append(Metric.step <= step_max)
    lo = step_min if step_min is not None else 0
    hi = step_max if step_max is not None else last_step
    if hi is None:
        hi = session.scalar(select(func.max(Metric.step)).where(and_(*cond))) or 0
    width = max(1, math.ceil((hi - lo + 1) / max_points))
    out: dict[str, list[Point]] = {}
    if width == 1:
        q = select(Metric.key, Metric.step, Metric.value, Metric.time).where(*cond).order_by(Metric.key, Metric.step)
        for key, step, value, t in session.execute(q):
            out.setdefault(key, []).append(Point(step, value, t))
        return out
    bucket = ((Metric.step - lo) // width).label("bucket")  # floor division on both backends
    q = (select(Metric.key, func.max(Metric.step), func.avg(Metric.value), func.max(Metric.time))
         .where(*cond).group_by(Metric.key, bucket).order_by(Metric.key, func.max(Metric.step)))
    for key, step, value, t in session.execute(q):
        out.setdefault(key, []).append(Point(int(step), float(value) if value is not None else None, float(t)))
    return out


def metrics_after(session: Session, *, job_id: str, after_time: float, limit: int = 5000) -> list[tuple[str, int, float | None, float]]:
    """Rows written after `after_time` (the live tail of /metrics/stream), oldest first."""
    q = (select(Metric.key, Metric.step, Metric.value, Metric.time)
         .where(Metric.job_id == job_id, Metric.time > after_time).order_by(Metric.time, Metric.step).limit(limit))
    return [tuple(r) for r in session.execute(q)]  # type: ignore[misc]
