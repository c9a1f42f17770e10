"""Pause and resume through the API, on SQLite and PostgreSQL (no worker: the statuses, events, refusals and
the audit log; the worker side is in tests/service/test_workers.py)."""

from __future__ import annotations

from tests.service.conftest import auth, tiny_spec


def test_a_queued_job_pauses_at_once_and_resumes_to_the_queue(client, keys, micro_models) -> None:
    red = auth(keys["red"])
    job = client.post("/v1/jobs", json=tiny_spec(micro_models), headers=red).json()
    r = client.post(f"/v1/jobs/{job['id']}/pause", headers=red)
    assert r.status_code == 202 and r.json()["status"] == "paused" and not r.json()["is_terminal"]
    assert client.post(f"/v1/jobs/{job['id']}/pause", headers=red).json()["status"] == "paused"  # idempotent
    assert client.get(f"/v1/jobs/{job['id']}", headers=red).json()["status"] == "paused"  # the poll cache follows
    assert client.post(f"/v1/jobs/{job['id']}/resume", headers=red).json()["status"] == "queued"
    assert client.post(f"/v1/jobs/{job['id']}/resume", headers=red).json()["status"] == "queued"  # no-op
    kinds = [e["kind"] for e in client.get(f"/v1/jobs/{job['id']}/events", headers=red).json()["items"]]
    assert kinds == ["queued", "paused", "queued"]
    log = [e["action"] for e in client.get("/v1/audit", headers=red).json()["items"]]
    assert log[-3:] == ["job.submit", "job.pause", "job.resume"]


def test_pause_and_resume_refuse_what_the_state_machine_does_not_allow(client, keys, micro_models) -> None:
    red = auth(keys["red"])
    job = client.post("/v1/jobs", json=tiny_spec(micro_models), headers=red).json()
    client.post(f"/v1/jobs/{job['id']}/pause", headers=red)
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=red).json()["status"] == "cancelled"  # paused: at once
    for action in ("pause", "resume"):
        r = client.post(f"/v1/jobs/{job['id']}/{action}", headers=red)
        assert r.status_code == 409 and "cancelled cannot become" in r.text, (action, r.text)
    # another team's job is no job; a read key may not pause
    assert client.post(f"/v1/jobs/{job['id']}/pause", headers=auth(keys["blue"])).status_code == 404
    read = client.post("/v1/keys", json={"role": "read"}, headers=red).json()["key"]
    assert client.post(f"/v1/jobs/{job['id']}/resume", headers=auth(read)).status_code == 403


def test_a_paused_job_does_not_count_against_the_active_jobs_quota(client, keys, micro_models) -> None:
    red = auth(keys["red"])
    job = client.post("/v1/jobs", json=tiny_spec(micro_models), headers=red).json()
    client.post(f"/v1/jobs/{job['id']}/pause", headers=red)
    assert client.get("/v1/usage", headers=red).json()["active_jobs"] == 0
