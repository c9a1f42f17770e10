"""Drill: 200 pollers and 20 live metric streams for a bounded minute while a job trains.

The production stack on its own PostgreSQL and Redis, with the default per-key rate limit: the load comes from
20 read keys of the team (10 pollers and one stream each, as 20 users' dashboards would), each poller asking
for the job every second. The load runs in a process of its own (`bench/poll_load.py`). The job's step time
is its `time/step` metric, compared between the load minute and the quiet windows before and after it in the
same run. This machine has 2 cores: the job trains on one thread (as a GPU job leaves the CPU to the service),
the API, PostgreSQL, Redis and the load share the other."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rlad.service import LocalService
from tests.drills.conftest import wait_for
from tests.service.conftest import free_port, tiny_spec

pytestmark = pytest.mark.slow

LOAD = Path(__file__).resolve().parents[2] / "bench" / "poll_load.py"
POLLERS, STREAMS, KEYS = 200, 20, 20
QUIET_S, LOAD_S, SETTLE_S = 20.0, 60.0, 3.0


@pytest.fixture(scope="module")
def stack(private_pg, private_redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    svc = LocalService(
        tmp_path_factory.mktemp("load"),
        port=free_port(),
        env={
            "RLAD_DATABASE_URL": private_pg.url,
            "RLAD_BROKER_URL": private_redis.url,
            "RLAD_METRICS_FLUSH_S": "1",
            "RLAD_MODEL_ROOTS": json.dumps([str(tmp_path_factory.getbasetemp())]),
        },  # the default rate limit (RLAD_RATE_LIMIT_PER_S) stays on
    )
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


def _mean_step_s(series: dict, start: float, end: float) -> tuple[float, int]:
    """Mean `time/step` of the steps written in [start + SETTLE_S, end] (unix times)."""
    picked = [v for v, t in zip(series["values"], series["times"], strict=True) if start + SETTLE_S <= t <= end]
    assert len(picked) >= 20, f"only {len(picked)} steps in a window of {end - start:.0f} s"
    return statistics.fmean(picked), len(picked)


def test_200_pollers_and_20_streams_for_a_minute_cost_training_at_most_10_percent(stack, micro_models) -> None:
    admin = {"Authorization": f"Bearer {stack.api_key}"}
    with httpx.Client(base_url=stack.base_url, headers=admin, timeout=30) as http:
        keys = [
            http.post("/v1/keys", json={"name": f"dashboard-{i}", "role": "read"}).json()["key"] for i in range(KEYS)
        ]
        spec = tiny_spec(
            micro_models,
            steps=20_000,
            batch_size=32,  # steps of about 0.1 s rather than 0.01 s: metrics arrive at 10 steps/s, not 100
            max_new_tokens=16,
            # a policy that barely moves samples the same lengths all along: the step time stays comparable
            # across the windows (at lr 1e-3 it drifted by up to 15% between the two quiet windows)
            lr=1e-9,
            eval_every=0,
            checkpoint_every=20_000,
            threads=1,
            name="load",
        )
        job = http.post("/v1/jobs", json=spec).json()
        wait_for(http, job["id"], lambda j: j["status"] == "running" and j["steps_done"] >= 20)

        t_quiet1 = time.time()
        time.sleep(QUIET_S)
        t_load = time.time()
        cmd = [sys.executable, str(LOAD), "--base-url", stack.base_url, "--job", job["id"]]
        cmd += [a for k in keys for a in ("--key", k)]
        cmd += ["--pollers", str(POLLERS), "--streams", str(STREAMS), "--interval", "1", "--duration", str(LOAD_S)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=LOAD_S + 120)
        assert done.returncode == 0, done.stderr[-3000:]
        load = json.loads(done.stdout)
        t_quiet2 = time.time()
        time.sleep(QUIET_S)
        t_end = time.time()

        status = http.get(f"/v1/jobs/{job['id']}").json()["status"]
        (series,) = http.get(f"/v1/jobs/{job['id']}/metrics", params={"key": "time/step", "max_points": 10_000}).json()[
            "series"
        ]
        http.post(f"/v1/jobs/{job['id']}/cancel")
        wait_for(http, job["id"], lambda j: j["is_terminal"])

    assert status == "running"
    assert load["errors"] == 0, load["error_examples"]  # every answer a 200, every stream open to the end
    assert load["transport_errors"] == 0, load["transport_error_examples"]  # every poll answered (resent at most once)
    assert load["requests"] >= 0.9 * POLLERS * LOAD_S  # every poller kept polling at its interval
    assert load["stream_events_min"] > 0  # every stream received metrics during the minute
    quiet1, n1 = _mean_step_s(series, t_quiet1, t_load)
    loaded, n2 = _mean_step_s(series, t_load, t_quiet2)
    quiet2, n3 = _mean_step_s(series, t_quiet2, t_end)
    quiet = (quiet1 * n1 + quiet2 * n3) / (n1 + n3)
    slowdown = loaded / quiet - 1
    print(
        f"\ndrill: {POLLERS} pollers (1/s each, {KEYS} keys) + {STREAMS} metric streams for {LOAD_S:.0f} s: "
        f"{load['requests']} polls, {load['errors']} errors, {load['transport_errors']} lost connections, "
        f"{load['resent']} polls sent again on a new connection, "
        f"after the first {load['warmup_s']:.0f} s p50 {load['p50_ms']} ms, p99 {load['p99_ms']} ms; "
        f"p99 of all {load['p99_all_ms']} ms, "
        f"max {load['max_ms']} ms (polls over 100 ms by second of the load: {load['slow_polls_by_second']}), "
        f"{load['stream_events_total']} stream events (at least "
        f"{load['stream_events_min']} per stream); step time {quiet1 * 1000:.1f} ms quiet before ({n1} steps), "
        f"{loaded * 1000:.1f} ms under load ({n2}), {quiet2 * 1000:.1f} ms quiet after ({n3}): {slowdown:+.1%}"
    )
    assert slowdown <= 0.10
