"""Drill: kill -9 of the whole embedded service (`rlad up` and every process it started: the API, both workers,
their pool children, the job's supervisor and trainer) while a job trains, then `rlad up` again on the same
data directory. Nothing gets to say goodbye: the job row still says `running` on a worker that no longer
exists. The restarted worker recognises the job as its previous run's (`store.jobs.worker_restarted`), the job
is queued again at once and resumes from its last checkpoint; the metric steps stay contiguous."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from rlad.service import free_port
from tests.drills.conftest import event_kinds, processes_of, wait_for
from tests.service.conftest import tiny_spec

pytestmark = pytest.mark.slow

STEPS, EVERY = 200, 20


def _rlad_up(data: Path, port: int, env: dict[str, str]) -> subprocess.Popen:
    log = open(data.parent / f"{data.name}-up.log", "ab")  # noqa: SIM115 (lives as long as the process)
    return subprocess.Popen(
        [sys.executable, "-m", "rlad.cli", "up", "--data-dir", str(data), "--port", str(port)],
        env={**os.environ, **env, "RLAD_DATA_DIR": str(data)},  # processes_of() finds `rlad up` itself too
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_ready(base_url: str, up: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert up.poll() is None, f"rlad up exited with {up.returncode}"
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "rlad up was not ready in time"
        time.sleep(0.2)


def _kill_tree(data: Path) -> int:
    """SIGKILL every process of the data directory until none is left; returns how many were killed."""
    killed: set[int] = set()
    deadline = time.monotonic() + 30
    while pids := processes_of(data):
        assert time.monotonic() < deadline, f"processes outlived SIGKILL: {pids}"
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    return len(killed)


def test_kill_9_of_the_whole_embedded_service_then_rlad_up_resumes_the_job(tmp_path_factory, micro_models) -> None:
    env = {
        "RLAD_HEARTBEAT_INTERVAL_S": "0.5",
        "RLAD_METRICS_FLUSH_S": "0.5",
        "RLAD_REAPER_INTERVAL_S": "5",
        "RLAD_MODEL_ROOTS": json.dumps([str(tmp_path_factory.getbasetemp())]),
    }
    data, port = tmp_path_factory.mktemp("embedded-kill") / "data", free_port()
    base_url = f"http://127.0.0.1:{port}"
    up = _rlad_up(data, port, env)
    try:
        _wait_ready(base_url, up)
        key = (data / "api_key").read_text().strip()
        http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        spec = tiny_spec(micro_models, steps=STEPS, eval_every=0, checkpoint_every=EVERY, name="kill-9")
        job = http.post("/v1/jobs", json=spec).json()
        at_kill = wait_for(http, job["id"], lambda j: j["status"] == "running" and j["steps_done"] >= 2 * EVERY + 5)
        http.close()
        killed = _kill_tree(data)
        up.wait(timeout=10)
    finally:
        if up.poll() is None:
            _kill_tree(data)
    assert killed >= 6  # rlad up, the API, two workers and their pool children, the supervisor, the trainer

    t0 = time.monotonic()
    up = _rlad_up(data, port, env)
    try:
        _wait_ready(base_url, up)
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            wait_for(http, job["id"], lambda j: j["attempt"] == 2 and j["status"] == "running")
            recovered_in = time.monotonic() - t0
            done = wait_for(http, job["id"], lambda j: j["status"] == "succeeded", timeout_s=300)
            events = http.get(f"/v1/jobs/{job['id']}/events").json()["items"]
            (lost,) = [e for e in events if e["kind"] == "lost"]
            assert lost["data"]["reason"] == "its worker restarted"
            (started_again,) = [e for e in events if e["kind"] == "resumed"]
            saved = [e["data"]["step"] for e in events if e["kind"] == "checkpoint_saved" and e["attempt"] == 1]
            assert started_again["data"]["step"] == saved[-1] >= 2 * EVERY  # the last checkpoint before the kill
            assert done["attempt"] == 2 and event_kinds(http, job["id"])[-1] == "succeeded"
            (loss,) = http.get(f"/v1/jobs/{job['id']}/metrics", params={"key": "loss", "max_points": 10_000}).json()[
                "series"
            ]
            assert loss["steps"] == list(range(1, STEPS + 1))  # no gap, no step twice
            ckpts = [c["step"] for c in http.get(f"/v1/jobs/{job['id']}/checkpoints").json()["items"]]
            on_disk = sorted(
                int(p.name.removeprefix("step-"))
                for p in (data / "results" / "jobs" / job["id"] / "checkpoints").iterdir()
            )
            assert sorted(ckpts) == on_disk  # a checkpoint cut short by the kill left nothing listed or behind
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=120)
    assert processes_of(data) == []
    print(
        f"\ndrill: kill -9 of the whole `rlad up` tree ({killed} processes) at step {at_kill['steps_done']}: "
        f"the job resumed from step {started_again['data']['step']} {recovered_in:.1f} s after `rlad up` started "
        f"again, finished {STEPS} contiguous steps"
    )
