"""Drill: PostgreSQL goes away for a few seconds while a job trains (a restart, a failover).

Before the fix three `pg_ctl -m fast restart`s failed an 8000-step job ("lost 3 times"): the supervisor's
status poll raised, the Celery task died and took the trainer with it; a POST got a 500 from a pooled
connection the restart had dropped."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from rlad.client import Client
from tests.drills.conftest import event_kinds, wait_for
from tests.service.conftest import tiny_spec

pytestmark = pytest.mark.slow

OUTAGE_S = 6.0


def test_a_database_outage_costs_a_running_job_nothing(
    drill_stack, http: httpx.Client, private_pg, micro_models
) -> None:
    steps = 150
    job = http.post(
        "/v1/jobs", json=tiny_spec(micro_models, steps=steps, eval_every=0, checkpoint_every=50, name="outage")
    ).json()
    before = wait_for(http, job["id"], lambda j: j["status"] == "running" and j["steps_done"] >= 5)

    private_pg.stop()
    submitted: dict[str, object] = {}
    try:
        time.sleep(1.5)  # past the poll cache (1 s): the poll needs the database
        r = http.get(f"/v1/jobs/{job['id']}")
        assert r.status_code == 503, r.text
        assert float(r.headers["retry-after"]) > 0
        assert r.json()["error"]["code"] == "database_unavailable"
        ready = http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] == "unavailable"
        assert str(private_pg.port) not in ready.text and "127.0.0.1" not in ready.text

        # a submission during the outage: the client retries with one idempotency key until the database is back
        def submit() -> None:
            with Client(drill_stack.base_url, drill_stack.api_key) as c:
                submitted["job"] = c.submit(tiny_spec(micro_models, steps=2, name="during-outage"), retries=8)

        t = threading.Thread(target=submit)
        t.start()
        time.sleep(OUTAGE_S - 1.5)
    finally:
        private_pg.start()
    back_at = time.monotonic()
    t.join(timeout=60)
    assert "job" in submitted, "the client's submit did not get through after the database came back"

    # the trainer trained through the outage: its buffered progress lands as soon as the database is back
    after = wait_for(http, job["id"], lambda j: j["steps_done"] > before["steps_done"], timeout_s=30)
    print(
        f"drill: {OUTAGE_S:.0f} s outage at step {before['steps_done']}; {time.monotonic() - back_at:.1f} s after "
        f"the restart the job reported step {after['steps_done']} (attempt {after['attempt']})"
    )
    # (a fast machine trains the rest during the outage: then it is already done)
    assert after["attempt"] == 1 and after["status"] in ("running", "succeeded")
    done = wait_for(http, job["id"], lambda j: j["status"] == "succeeded")
    assert done["attempt"] == 1 and done["steps_done"] == steps
    kinds = event_kinds(http, job["id"])
    assert "lost" not in kinds and kinds.count("claimed") == 1

    # every step's metrics reached the database, the ones trained during the outage too
    series = http.get(f"/v1/jobs/{job['id']}/metrics", params={"key": "time/step", "max_points": 10_000}).json()
    assert series["series"][0]["steps"] == list(range(1, steps + 1))

    # exactly one job from the retried submission
    mine = [j for j in http.get("/v1/jobs", params={"limit": 200}).json()["items"] if j["name"] == "during-outage"]
    assert len(mine) == 1 and mine[0]["id"] == submitted["job"]["id"]  # type: ignore[index]
    wait_for(http, mine[0]["id"], lambda j: j["status"] == "succeeded")
