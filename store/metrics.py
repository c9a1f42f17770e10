"""Metrics: batched idempotent writes (upsert on (job, key, step)) and reads with server-side downsampling."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import func, select, text
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
    """The job's metric keys, by a skip scan of the primary key (job, key, step): one index probe per key,
    not a pass over every point (a long job has millions)."""
    q = text("""
        WITH RECURSIVE k(key) AS (
            SELECT (SELECT key FROM metrics WHERE job_id = :job ORDER BY key LIMIT 1)
            UNION ALL
            SELECT (SELECT key FROM metrics WHERE job_id = :job AND key > k.key ORDER BY key LIMIT 1)
            FROM k WHERE k.key IS NOT NULL)
        SELECT key FROM k WHERE key IS NOT NULL""")
    return list(session.scalars(q, {"job": job_id}))


def read_metrics(session: Session, *, job_id: str, keys: list[str] | None = None, step_min: int | None = None,
                 step_max: int | None = None, max_points: int = 1000,
                 last_step: int | None = None) -> dict[str, list[Point]]:
    """Points per key in the step range, at most `max_points` per key.

    A range longer than `max_points` steps is cut into equal-width step buckets and each bucket is
    represented by its first point (sampling, as TensorBoard does: values are real points, noise stays
    visible; a sparse key such as an evaluation every 25 steps keeps every point while its buckets hold
    one each). On PostgreSQL that is one index probe per bucket and key (LATERAL ... LIMIT 1), so the cost
    follows the points returned, not the points stored. `last_step` (the job's progress) bounds the range
    without a scan."""
    keys = keys or metric_keys(session, job_id=job_id)
    lo = step_min if step_min is not None else 0
    hi = step_max if step_max is not None else last_step
    if hi is None:
        hi = session.scalar(select(func.max(Metric.step)).where(Metric.job_id == job_id, Metric.key.in_(keys))) or 0
    width = max(1, math.ceil((hi - lo + 1) / max_points))
    out: dict[str, list[Point]] = {}
    if not keys or hi < lo:
        return out
    if width == 1:
        q = (select(Metric.key, Metric.step, Metric.value, Metric.time)
             .where(Metric.job_id == job_id, Metric.key.in_(keys), Metric.step >= lo, Metric.step <= hi)
             .order_by(Metric.key, Metric.step))
    elif session.get_bind().dialect.name == "postgresql":
        q = text("""
            SELECT k.key, m.step, m.value, m.time
            FROM unnest(CAST(:keys AS varchar[])) AS k(key)
            CROSS JOIN generate_series(CAST(:lo AS integer), CAST(:hi AS integer), CAST(:w AS integer)) AS b(start)
            CROSS JOIN LATERAL (
                SELECT step, value, time FROM metrics
                WHERE job_id = :job AND key = k.key AND step >= b.start AND step < b.start + :w AND step <= :hi
                ORDER BY step LIMIT 1) AS m
            ORDER BY k.key, m.step""").bindparams(keys=keys, lo=lo, hi=hi, w=width, job=job_id)
    else:
        # SQLite (embedded, small): one pass; with MIN(), SQLite takes the other columns from the same row
        bucket = (Metric.step - lo) // width
        q = (select(Metric.key, func.min(Metric.step), Metric.value, Metric.time)
             .where(Metric.job_id == job_id, Metric.key.in_(keys), Metric.step >= lo, Metric.step <= hi)
             .group_by(Metric.key, bucket).order_by(Metric.key, func.min(Metric.step)))
    for key, step, value, t in session.execute(q):
        out.setdefault(key, []).append(Point(int(step), value, float(t)))
    return out


def latest_points(session: Session, *, job_id: str, keys: list[str] | None = None) -> dict[str, Point]:
    """The newest point of each key (one index probe per key)."""
    out: dict[str, Point] = {}
    for key in keys or metric_keys(session, job_id=job_id):
        row = session.execute(select(Metric.step, Metric.value, Metric.time)
                              .where(Metric.job_id == job_id, Metric.key == key)
                              .order_by(Metric.step.desc()).limit(1)).first()
        if row is not None:
            out[key] = Point(int(row[0]), row[1], float(row[2]))
    return out


def metrics_after(session: Session, *, job_id: str, after_time: float, limit: int = 5000) -> list[tuple[str, int, float | None, float]]:
    """Rows written after `after_time` (the live tail of /metrics/stream), oldest first."""
    q = (select(Metric.key, Metric.step, Metric.value, Metric.time)
         .where(Metric.job_id == job_id, Metric.time > after_time).order_by(Metric.time, Metric.step).limit(limit))
    return [tuple(r) for r in session.execute(q)]  # type: ignore[misc]
