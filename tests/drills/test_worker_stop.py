"""Drills: a worker told to stop (SIGTERM: a deploy, `docker compose stop`), and a backlog of cancelled jobs.

Before the fix a stopped worker neither checkpointed nor released its job (warm shutdown waited for the whole
job; compose's SIGQUIT lost it until the heartbeat timeout), and 200 cancelled jobs' messages made the next
real job wait about 4 minutes, the worker forking a child per message."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from tests.drills.conftest import event_kinds, wait_for
from tests.service.conftest import tiny_spec

pytestmark = pytest.mark.slow


def _stop_worker(stack) -> float:
    """SIGTERM to the gpu worker's main process (what Docker sends to a container); seconds until it exited."""
    worker = stack.procs["worker-gpu"]
    t0 = time.monotonic()
    os.kill(worker.pid, signal.SIGTERM)
    worker.wait(timeout=120)
    return time.monotonic() - t0


def test_sigterm_to_a_worker_checkpoints_the_job_and_releases_it_at_once(
    drill_stack, http: httpx.Client, micro_models
) -> None:
    steps = 400
    job = http.post(
        "/v1/jobs", json=tiny_spec(micro_models, steps=steps, eval_every=0, checkpoint_every=1000, name="deploy")
    ).json()
    wait_for(http, job["id"], lambda j: j["status"] == "running" and j["steps_done"] >= 5)

    stopped_in = _stop_worker(drill_stack)
    print(f"drill: SIGTERM -> worker exited, job checkpointed and released in {stopped_in:.1f} s")
    released = http.get(f"/v1/jobs/{job['id']}").json()
    assert released["status"] == "queued", released  # at once: not after the 30 s heartbeat timeout
    assert stopped_in < 30
    events = http.get(f"/v1/jobs/{job['id']}/events").json()["items"]
    rel = next(e for e in events if e["kind"] == "released")
    ckpt = [e for e in events if e["kind"] == "checkpoint_saved"]
    assert ckpt and ckpt[-1]["data"]["step"] == rel["data"]["step"] > 0  # checkpointed where it stopped
    step_at_stop = rel["data"]["step"]

    assert dict(drill_stack.restart_exited()) == {"worker-gpu": 0}  # a warm shutdown exits 0
    done = wait_for(http, job["id"], lambda j: j["status"] == "succeeded")
    kinds = event_kinds(http, job["id"])
    assert done["attempt"] == 2 and "lost" not in kinds and "failed" not in kinds
    resumed = [e for e in http.get(f"/v1/jobs/{job['id']}/events").json()["items"] if e["kind"] == "resumed"]
    assert [e["data"]["step"] for e in resumed] == [step_at_stop]


def test_a_backlog_of_cancelled_jobs_does_not_hold_up_the_next_job(
    drill_stack, http: httpx.Client, micro_models
) -> None:
    _stop_worker(drill_stack)  # idle: messages pile up in the broker while it is away
    n = 100
    for i in range(n):
        j = http.post("/v1/jobs", json=tiny_spec(micro_models, name=f"backlog-{i}")).json()
        assert http.post(f"/v1/jobs/{j['id']}/cancel").json()["status"] == "cancelled"
    real = http.post("/v1/jobs", json=tiny_spec(micro_models, steps=2, name="after-backlog")).json()
    assert real["queue_position"] == 1  # the database's truth: the cancelled jobs are not ahead of it

    t0 = time.monotonic()
    drill_stack.restart_exited()
    wait_for(http, real["id"], lambda j: j["status"] in ("starting", "running", "succeeded"), timeout_s=120)
    claimed_after = time.monotonic() - t0
    print(
        f"drill: the real job was claimed {claimed_after:.1f} s after the worker restarted behind {n} "
        "cancelled messages"
    )
    wait_for(http, real["id"], lambda j: j["status"] == "succeeded")
    log = (drill_stack.data_dir / "logs" / "worker-gpu.log").read_text()
    assert log.count("message dropped") >= n
    # one query per stale message, no process: well under the ~1.2 s a message cost with a fresh child each
    assert claimed_after < 60, f"the real job waited {claimed_after:.0f} s behind {n} cancelled messages"
