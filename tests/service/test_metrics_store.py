"""Metric writes and downsampled reads against a brute-force reference, on SQLite and PostgreSQL."""

from __future__ import annotations

import random

import pytest

from store import jobs as job_store
from store import metrics as metric_store
from store.db import session_scope
from store.teams import get_or_create_team

SPEC = {"student": "s", "teacher": "t", "steps": 10, "batch_size": 8, "group_size": 4}


@pytest.fixture
def job_id(service_env) -> str:
    with session_scope() as s:
        team = get_or_create_team(s, name="red")
        job, _ = job_store.submit_job(s, team_id=team.id, spec=SPEC)
        return job.id


def reference(points: dict[str, dict[int, float]], lo: int, hi: int, width: int) -> dict[str, list[int]]:
    """The first step of each bucket (step // width) within [lo, hi], per key: the definition, by brute force."""
    out: dict[str, list[int]] = {}
    for key, by_step in sorted(points.items()):
        firsts: dict[int, int] = {}
        for step in sorted(by_step):
            if lo <= step <= hi:
                firsts.setdefault(step // width, step)
        if firsts:
            out[key] = list(firsts.values())
    return out


def test_downsampled_reads_match_the_definition_for_dense_and_sparse_keys(job_id: str) -> None:
    rng = random.Random(7)
    points = {
        "loss": {s: s * 0.5 for s in range(0, 5000)},  # every step
        "eval/accuracy": {s: s / 1e4 for s in range(0, 5000, 25)},  # every 25 steps
        "rare": {s: 1.0 for s in rng.sample(range(5000), 40)},
    }  # scattered
    rows: dict[int, dict[str, float]] = {}
    for key, by_step in points.items():
        for step, v in by_step.items():
            rows.setdefault(step, {})[key] = v
    batch = sorted(rows.items())
    with session_scope() as s:  # written in uneven batches, as a trainer's flushes are
        i = 0
        while i < len(batch):
            n = rng.randint(1, 700)
            metric_store.write_metrics(s, job_id=job_id, rows=batch[i : i + n])
            i += n
    cases = [
        (0, 4999, 1000),
        (0, 4999, 100),
        (1, 4999, 7),
        (37, 3211, 50),
        (123, 130, 3),
        (999, 4000, 2999),
        (4990, 4999, 1),
    ] + [(lo, lo + rng.randint(0, 4999 - lo), rng.randint(1, 600)) for lo in rng.sample(range(4999), 30)]
    with session_scope() as s:
        for lo, hi, max_points in cases:
            got = metric_store.read_metrics(s, job_id=job_id, step_min=lo, step_max=hi, max_points=max_points)
            assert all(len(p) <= max_points for p in got.points.values()), (lo, hi, max_points)
            expected = reference(points, lo, hi, got.bucket)
            assert {k: [p.step for p in v] for k, v in got.points.items()} == expected, (lo, hi, max_points)
            for key, pts in got.points.items():
                assert all(p.value == points[key][p.step] for p in pts)
            if hi - lo + 1 <= max_points:
                assert got.bucket == 1


def test_rewritten_steps_replace_points_and_rollups_and_a_rebuild_agrees(job_id: str) -> None:
    with session_scope() as s:
        metric_store.write_metrics(s, job_id=job_id, rows=[(i, {"loss": 1.0}) for i in range(1, 300)])
        # a resumed attempt repeats steps 64..299 with new values
        metric_store.write_metrics(s, job_id=job_id, rows=[(i, {"loss": 2.0}) for i in range(64, 300)])
    with session_scope() as s:
        got = metric_store.read_metrics(s, job_id=job_id, step_min=0, step_max=299, max_points=10)
        assert got.bucket == 32 and [p.step for p in got.points["loss"]] == [1] + list(range(32, 300, 32))
        assert [p.value for p in got.points["loss"]] == [1.0, 1.0] + [2.0] * 8
        before = {(r.key, r.level, r.bucket, r.step, r.value) for r in s.query(metric_store.MetricRollup)}
        metric_store.rebuild_rollups(s, job_id=job_id)
    with session_scope() as s:
        after = {(r.key, r.level, r.bucket, r.step, r.value) for r in s.query(metric_store.MetricRollup)}
    assert before == after and len(before) > 0


@pytest.mark.parametrize(("lo", "hi", "max_points"), [(0, 99, 10), (1, 1_000_000, 1000), (5, 5, 1), (0, 10**9, 3)])
def test_bucket_width_keeps_within_max_points(lo: int, hi: int, max_points: int) -> None:
    width, level = metric_store.bucket_width(lo, hi, max_points)
    assert width % metric_store.ROLLUP_BASE**level == 0
    assert hi // width - lo // width + 1 <= max_points
    assert width < 2 * max(1, -(-(hi - lo + 1) // max_points)) + metric_store.ROLLUP_BASE**level
