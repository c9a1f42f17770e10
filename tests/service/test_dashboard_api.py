"""What the dashboard stands on, in-process (TestClient, SQLite and PostgreSQL): the sign-in cookie and its
CSRF rule, the samples and queue routes, the pages' redirects. The pages themselves run in a browser in
tests/e2e."""

from __future__ import annotations

from store import samples as sample_store
from store import workers as worker_store
from store.db import session_scope
from tests.service.conftest import auth

SPEC = {"student": "rlad-test/s", "teacher": "rlad-test/t", "steps": 10, "batch_size": 8, "group_size": 4}


def submit(client, key: str) -> dict:
    r = client.post("/v1/jobs", json=SPEC, headers=auth(key))
    assert r.status_code == 202
    return r.json()


def test_pages_send_a_signed_out_browser_to_sign_in_and_back(client, keys) -> None:
    r = client.get("/ui/jobs?status=running", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/login?next=/ui/jobs%3Fstatus%3Drunning"
    assert client.get("/", follow_redirects=False).headers["location"] == "/ui/jobs"
    bad = client.post("/ui/login", data={"key": "rlad_nope", "next": "/ui/queue"}, follow_redirects=False)
    assert bad.status_code == 401 and "unknown, expired or revoked" in bad.text
    ok = client.post("/ui/login", data={"key": keys["red"], "next": "/ui/queue"}, follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/ui/queue"
    cookie = ok.headers["set-cookie"].lower()
    assert "httponly" in cookie and "secure" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    # never a redirect off the site
    for target in ("//evil.example/x", "https://evil.example/", "/v1/jobs"):
        r = client.post("/ui/login", data={"key": keys["red"], "next": target}, follow_redirects=False)
        assert r.headers["location"] == "/ui/jobs", target


def sign_in(client, key: str) -> str:
    """The session cookie's value after signing in with `key` (the client keeps no cookie: tests send it)."""
    r = client.post("/ui/login", data={"key": key}, follow_redirects=False)
    assert r.status_code == 303
    token = r.cookies["rlad_session"]
    client.cookies.clear()
    return token


def test_the_cookie_authenticates_reads_and_writes_need_the_header(client, keys) -> None:
    job = submit(client, keys["red"])
    cookie = {"Cookie": f"rlad_session={sign_in(client, keys['red'])}"}
    assert client.get(f"/v1/jobs/{job['id']}", headers=cookie).json()["id"] == job["id"]
    blue = {"Cookie": f"rlad_session={sign_in(client, keys['blue'])}"}
    assert client.get(f"/v1/jobs/{job['id']}", headers=blue).status_code == 404
    forged = client.post(f"/v1/jobs/{job['id']}/cancel", headers=cookie)  # what a cross-site form could send
    assert forged.status_code == 401 and "x-requested-with" in forged.json()["error"]["message"]
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth(keys["red"])).json()["status"] == "queued"
    ok = client.post(f"/v1/jobs/{job['id']}/cancel", headers={**cookie, "X-Requested-With": "rlad-dashboard"})
    assert ok.status_code == 202 and ok.json()["status"] == "cancelled"


def test_samples_are_newest_first_filtered_and_pruned(client, keys) -> None:
    job = submit(client, keys["red"])
    with session_scope() as s:
        for step in range(1, sample_store.KEEP + 11):
            sample_store.write_samples(
                s,
                job_id=job["id"],
                step=step,
                rows=[
                    {
                        "prompt": f"{step}+1=",
                        "completion": "x" * 20_000,
                        "reward": 0.5,
                        "correct": False,
                        "eval": step % 10 == 0,
                    }
                ],
            )
    h = auth(keys["red"])
    items = client.get(f"/v1/jobs/{job['id']}/samples", params={"limit": 3}, headers=h).json()["items"]
    last = sample_store.KEEP + 10
    assert [i["step"] for i in items] == [last, last - 1, last - 2]
    assert len(items[0]["completion"]) == sample_store.MAX_TEXT and items[0]["eval"] is True
    evals = client.get(f"/v1/jobs/{job['id']}/samples", params={"eval": "true", "limit": 200}, headers=h).json()
    assert {i["step"] % 10 for i in evals["items"]} == {0}
    everything = client.get(f"/v1/jobs/{job['id']}/samples", params={"limit": 200}, headers=h).json()["items"]
    assert len(everything) == 200 and everything[-1]["step"] == 11  # the oldest 10 were dropped
    assert client.get(f"/v1/jobs/{job['id']}/samples", headers=auth(keys["blue"])).status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}/samples", params={"limit": 0}, headers=h).status_code == 422


def test_queue_shows_depth_and_workers_but_only_the_callers_job_ids(client, keys) -> None:
    from store import jobs as job_store

    red_job, blue_job = submit(client, keys["red"]), submit(client, keys["blue"])
    submit(client, keys["red"])
    with session_scope() as s:
        worker_store.worker_heartbeat(s, name="gpu@a", queues=["gpu"], pid=11)
        worker_store.worker_heartbeat(s, name="gpu@b", queues=["gpu"], pid=12)
        worker_store.worker_heartbeat(s, name="cpu@c", queues=["cpu"], pid=13)
        job_store.claim_job(s, job_id=red_job["id"], worker="gpu@a")
        job_store.claim_job(s, job_id=blue_job["id"], worker="gpu@b")
    with session_scope() as s:
        worker_store.worker_gone(s, name="cpu@c", pid=13)
    red = client.get("/v1/queue", headers=auth(keys["red"])).json()
    # per queue only the caller's own jobs; the whole cluster only as totals
    assert red["queues"] == [{"queue": "gpu", "queued": 1, "running": 1}]
    assert red["totals"] == {"queued": 1, "running": 2}
    workers = {w["name"]: w for w in red["workers"]}
    assert set(workers) == {"gpu@a", "gpu@b"} and all(w["alive"] for w in workers.values())
    assert workers["gpu@a"]["job_id"] == red_job["id"] and workers["gpu@a"]["busy"]
    assert workers["gpu@b"]["job_id"] is None and workers["gpu@b"]["busy"]  # another team's job: no id
    blue_state = client.get("/v1/queue", headers=auth(keys["blue"])).json()
    assert blue_state["queues"] == [{"queue": "gpu", "queued": 0, "running": 1}]
    assert blue_state["totals"] == {"queued": 1, "running": 2}
    blue = {w["name"]: w for w in blue_state["workers"]}
    assert blue["gpu@b"]["job_id"] == blue_job["id"] and blue["gpu@a"]["job_id"] is None
