"""Drill: the Redis broker restarts (without persistence, as it runs here) while one job trains and others wait
in its queue. The restart forgets every queued message; the running job's trainer does not use the broker.

Before the fix the waiting jobs sat `queued` until the reaper's undelivered rule sent them again,
RLAD_REDISPATCH_AFTER_S (10 minutes) after their submission. Now the reaper keeps a mark in Redis
(`store.dispatch.broker_forgot`); the first pass that finds it gone sends every queued job again. A duplicate
message is harmless: a claim is a conditional UPDATE."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.drills.conftest import event_kinds, wait_for
from tests.service.conftest import tiny_spec

pytestmark = pytest.mark.slow

DOWN_S = 3.0


def test_a_broker_restart_loses_no_queued_job_and_does_not_disturb_the_running_one(
    drill_stack, http: httpx.Client, private_redis, micro_models
) -> None:
    steps = 150
    running = http.post(
        "/v1/jobs", json=tiny_spec(micro_models, steps=steps, eval_every=0, checkpoint_every=50, name="running")
    ).json()
    wait_for(http, running["id"], lambda j: j["status"] == "running" and j["steps_done"] >= 5)
    waiting = [
        http.post("/v1/jobs", json=tiny_spec(micro_models, steps=4, eval_every=0, name=f"waiting-{i}")).json()
        for i in range(4)
    ]  # one job worker, busy: these wait in the broker's queue
    time.sleep(1.0)
    assert [http.get(f"/v1/jobs/{j['id']}").json()["status"] for j in waiting] == ["queued"] * 4

    at_restart = http.get(f"/v1/jobs/{running['id']}").json()["steps_done"]
    private_redis.restart(DOWN_S)
    back = time.monotonic()

    done = wait_for(http, running["id"], lambda j: j["status"] == "succeeded")
    assert done["attempt"] == 1 and "lost" not in event_kinds(http, running["id"])  # not disturbed
    series = http.get(f"/v1/jobs/{running['id']}/metrics", params={"key": "loss", "max_points": 10_000}).json()
    assert series["series"][0]["steps"] == list(range(1, steps + 1))
    ended = [wait_for(http, j["id"], lambda j: j["is_terminal"], timeout_s=240) for j in waiting]
    all_done_in = time.monotonic() - back
    for job in ended:  # each ran exactly once
        kinds = event_kinds(http, job["id"])
        assert (job["status"], job["attempt"], kinds.count("claimed"), kinds.count("started")) == (
            "succeeded",
            1,
            1,
            1,
        ), kinds
    print(
        f"\ndrill: Redis restarted ({DOWN_S:.0f} s down) at step {at_restart} of the running job, with 4 jobs "
        f"queued: the running job went on (attempt 1, {steps} contiguous steps); the 4 queued jobs each ran once, "
        f"all done {all_done_in:.1f} s after Redis was back"
    )
