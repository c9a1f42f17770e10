"""Metrics: batched idempotent writes (upsert on (job, key, step)) and reads with server-side downsampling.

Next to the points, `metric_rollups` keeps the first point of each aligned bucket of 4, 16, ..., 65536
steps of every series, updated in the same upsert, so reading 1,000 points out of 1,000,000 touches about
1,000 rows per key."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, SmallInteger, and_, delete, func, insert, literal, literal_column, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from store.models import Metric, MetricRollup


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


ROLLUP_BASE = 4
ROLLUP_LEVELS = 8  # bucket sizes 4, 16, ..., 65536 steps


def _upsert(
    session: Session,
    model: type[Metric] | type[MetricRollup],
    rows: list[dict[str, Any]],
    *,
    index: list[str],
    update: list[str],
    where_newer_step: bool = False,
) -> None:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    per_statement = 32766 // len(rows[0])  # SQLite's limit of bound variables per statement
    for i in range(0, len(rows), per_statement):
        stmt = insert(model).values(rows[i : i + per_statement])
        stmt = stmt.on_conflict_do_update(
            index_elements=index,
            set_={c: stmt.excluded[c] for c in update},
            # a rollup keeps the bucket's first step; a rewrite of that same step (a resumed attempt) replaces it
            where=(stmt.excluded.step <= model.step) if where_newer_step else None,
        )
        session.execute(stmt)


def _rollup_rows(job_id: str, values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first point of each (key, level, bucket) among `values`."""
    first: dict[tuple[str, int, int], dict[str, Any]] = {}
    for v in values:
        for level in range(1, ROLLUP_LEVELS + 1):
            k = (v["key"], level, v["step"] // ROLLUP_BASE**level)
            if k not in first or v["step"] < first[k]["step"]:
                first[k] = v
    return [
        {
            "job_id": job_id,
            "key": key,
            "level": level,
            "bucket": bucket,
            "step": v["step"],
            "value": v["value"],
            "time": v["time"],
        }
        for (key, level, bucket), v in first.items()
    ]


def write_metrics(
    session: Session, *, job_id: str, rows: Iterable[tuple[int, Mapping[str, float | None]]], at: float | None = None
) -> int:
    """Upsert `(step, {key: value})` rows; a repeated (job, key, step) replaces the old value. Keeps the
    rollups (first point per aligned bucket) in the same transaction. Returns the number of points."""
    now = time.time() if at is None else at
    values = [
        {"job_id": job_id, "step": step, "key": key, "value": _finite(v), "time": now}
        for step, kv in rows
        for key, v in kv.items()
    ]
    if not values:
        return 0
    _upsert(session, Metric, values, index=["job_id", "key", "step"], update=["value", "time"])
    _upsert(
        session,
        MetricRollup,
        _rollup_rows(job_id, values),
        index=["job_id", "key", "level", "bucket"],
        update=["step", "value", "time"],
        where_newer_step=True,
    )
    return len(values)


def rebuild_rollups(session: Session, *, job_id: str) -> None:
    """Recompute a job's rollups from its points (a backfill after a bulk load; writes keep them current)."""
    session.execute(delete(MetricRollup).where(MetricRollup.job_id == job_id))
    for level in range(1, ROLLUP_LEVELS + 1):
        size = ROLLUP_BASE**level
        bucket = Metric.step // literal_column(str(size))  # inline: GROUP BY must match the select's expression
        first = (
            select(Metric.key, bucket.label("bucket"), func.min(Metric.step).label("step"))
            .where(Metric.job_id == job_id)
            .group_by(Metric.key, bucket)
            .subquery()
        )
        rows = (
            select(
                Metric.job_id,
                Metric.key,
                literal(level, SmallInteger),
                first.c.bucket,
                Metric.step,
                Metric.value,
                Metric.time,
            )
            .join(first, (first.c.key == Metric.key) & (first.c.step == Metric.step))
            .where(Metric.job_id == job_id)
        )
        session.execute(
            insert(MetricRollup).from_select(["job_id", "key", "level", "bucket", "step", "value", "time"], rows)
        )


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


@dataclass(frozen=True)
class Series:
    points: dict[str, list[Point]]
    bucket: int  # steps per bucket; 1: every point in the range


def bucket_width(lo: int, hi: int, max_points: int) -> tuple[int, int]:
    """(bucket width, rollup level) for at most `max_points` aligned buckets over steps [lo, hi].

    The width is a multiple of the level's bucket size 4**level, so every bucket is a union of whole
    rollup buckets and its first point is the first of theirs: exact, from the rollups alone."""
    width = max(1, math.ceil((hi - lo + 1) / max_points))
    level = min(ROLLUP_LEVELS, int(math.log(width, ROLLUP_BASE) + 1e-9)) if width > 1 else 0
    size = ROLLUP_BASE**level
    width = math.ceil(width / size) * size
    while hi // width - lo // width + 1 > max_points:  # aligned buckets can overhang both ends
        width += size
    return width, level


def read_metrics(
    session: Session,
    *,
    job_id: str,
    keys: list[str] | None = None,
    step_min: int | None = None,
    step_max: int | None = None,
    max_points: int = 1000,
    last_step: int | None = None,
) -> Series:
    """Points per key in the step range [step_min, step_max], at most `max_points` per key.

    A longer range is cut into buckets aligned to multiples of a width (`bucket_width`) and each bucket is
    shown by its first point (sampling, as TensorBoard does: values are real points and noise stays visible;
    a sparse key such as an evaluation every 25 steps keeps every point while its buckets hold one each).
    The buckets are read from the rollups: one index range scan per key over about as many rows as are
    returned, whatever the number of points stored. `last_step` (the job's progress) bounds an open range
    without a scan."""
    keys = keys or metric_keys(session, job_id=job_id)
    lo = step_min if step_min is not None else 0
    hi = step_max if step_max is not None else last_step
    if hi is None:
        hi = session.scalar(select(func.max(Metric.step)).where(Metric.job_id == job_id, Metric.key.in_(keys))) or 0
    if not keys or hi < lo:
        return Series({}, 1)
    width, level = bucket_width(lo, hi, max_points)
    if width == 1:
        rows = session.execute(
            select(Metric.key, Metric.step, Metric.value, Metric.time)
            .where(Metric.job_id == job_id, Metric.key.in_(keys), Metric.step.between(lo, hi))
            .order_by(Metric.key, Metric.step)
        )
        out: dict[str, list[Point]] = {}
        for key, step, value, t in rows:
            out.setdefault(key, []).append(Point(step, value, t))
        return Series(out, 1)
    rows_first: list[Any] = []
    size = ROLLUP_BASE**level
    if lo % size:
        # the rollup bucket holding `lo` may start before it: the first bucket comes from the points
        edge = min(hi, (lo // width + 1) * width - 1)
        for key in keys:
            rows_first += session.execute(
                select(Metric.key, Metric.step, Metric.value, Metric.time)
                .where(Metric.job_id == job_id, Metric.key == key, Metric.step.between(lo, edge))
                .order_by(Metric.step)
                .limit(1)
            ).all()
        lo = edge + 1
    source: type[Metric] | type[MetricRollup]
    where: ColumnElement[bool]
    if level == 0:  # narrow buckets (2-3 steps): straight from the points
        source, where = Metric, Metric.step.between(lo, hi)
    else:
        source, where = (
            MetricRollup,
            and_(
                MetricRollup.level == level,
                MetricRollup.bucket.between(lo // size, hi // size),
                MetricRollup.step.between(lo, hi),
            ),
        )
    rows = session.execute(
        select(source.key, source.step, source.value, source.time)
        .where(source.job_id == job_id, source.key.in_(keys), where)
        .order_by(source.key, source.step)
    )
    out = {}
    seen: set[tuple[str, int]] = set()
    for key, step, value, t in itertools.chain(rows_first, rows):
        b = (key, step // width)
        if b not in seen:
            seen.add(b)
            out.setdefault(key, []).append(Point(step, value, t))
    return Series({k: out[k] for k in sorted(out)}, width)


def latest_points(session: Session, *, job_id: str, keys: list[str] | None = None) -> dict[str, Point]:
    """The newest point of each key (one index probe per key)."""
    out: dict[str, Point] = {}
    for key in keys or metric_keys(session, job_id=job_id):
        row = session.execute(
            select(Metric.step, Metric.value, Metric.time)
            .where(Metric.job_id == job_id, Metric.key == key)
            .order_by(Metric.step.desc())
            .limit(1)
        ).first()
        if row is not None:
            out[key] = Point(int(row[0]), row[1], float(row[2]))
    return out


def tail_cursor(session: Session, *, job_id: str, points: int) -> float:
    """A `metrics_after` cursor that leaves the newest `points` rows after it, whole batches (rows written
    together share their time): where a live tail opened without a cursor starts, so that it does not replay
    a long history. 0.0 when the job has no more rows than that. Two lookups on the (job, time) index."""
    kth = session.scalar(
        select(Metric.time).where(Metric.job_id == job_id).order_by(Metric.time.desc()).offset(points - 1).limit(1)
    )
    if kth is None:
        return 0.0
    before = session.scalar(select(func.max(Metric.time)).where(Metric.job_id == job_id, Metric.time < kth))
    return float(before) if before is not None else 0.0


def metrics_after(
    session: Session, *, job_id: str, after_time: float, limit: int = 5000
) -> list[tuple[str, int, float | None, float]]:
    """Rows written after `after_time` (the live tail of /metrics/stream), oldest first."""
    q = (
        select(Metric.key, Metric.step, Metric.value, Metric.time)
        .where(Metric.job_id == job_id, Metric.time > after_time)
        .order_by(Metric.time, Metric.step)
        .limit(limit)
    )
    return [tuple(r) for r in session.execute(q)]  # type: ignore[misc]
