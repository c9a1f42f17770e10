"""Webhooks without a worker, on SQLite and PostgreSQL: the URL check, what is due and how it is signed, the
retries' backoff and the final give-up, the team's secret (admin keys only). The delivery by the beat task to
a loopback receiver is in tests/service/test_workers.py."""

from __future__ import annotations

import json
from datetime import timedelta

from tests.service.conftest import auth, tiny_spec


def test_bad_webhook_urls_are_refused_naming_the_field(client, keys, micro_models) -> None:
    for url in ("ftp://example.com/x", "http://", "javascript:alert(1)", "https://a.example/" + "x" * 2000):
        r = client.post(
            "/v1/jobs", params={"webhook_url": url}, json=tiny_spec(micro_models), headers=auth(keys["red"])
        )
        assert r.status_code == 422 and "webhook_url" in r.text, (url, r.text)
    assert client.get("/v1/jobs", headers=auth(keys["red"])).json()["items"] == []  # nothing stored


def test_an_ended_job_is_due_signed_retried_with_backoff_then_given_up(client, keys, micro_models) -> None:
    from store import webhooks
    from store.db import session_scope
    from store.models import utcnow

    red = auth(keys["red"])
    job = client.post(
        "/v1/jobs", params={"webhook_url": "https://ci.example.com/hook"}, json=tiny_spec(micro_models), headers=red
    ).json()
    with session_scope() as s:
        assert webhooks.due(s) == []  # queued: not ended yet
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=red)  # queued -> cancelled: ended
    secret = client.get("/v1/webhook-secret", headers=red).json()["secret"]
    now = utcnow()
    for attempt in (1, 2, 3):
        with session_scope() as s:
            (d,) = webhooks.due(s, now=now)
            assert d.attempt == attempt and d.url == "https://ci.example.com/hook"
            assert webhooks.verify(secret, d.body, d.headers["X-Rlad-Signature"])
            assert json.loads(d.body)["job"]["status"] == "cancelled"
            assert webhooks.due(s, now=now) == []  # taken: a second sender meanwhile does not take it too
        with session_scope() as s:
            webhooks.record(
                s, job_id=job["id"], status_code=503, error="HTTP 503", max_attempts=3, backoff_s=10, now=now
            )
        with session_scope() as s:
            assert webhooks.due(s, now=now + timedelta(seconds=10 * 2 ** (attempt - 1) - 1)) == []  # backing off
        now += timedelta(seconds=10 * 2 ** (attempt - 1))
    tries = [
        e for e in client.get(f"/v1/jobs/{job['id']}/events", headers=red).json()["items"] if "webhook" in e["kind"]
    ]
    assert [(e["data"]["try"], e["data"]["final"]) for e in tries] == [(1, False), (2, False), (3, True)]
    assert client.get(f"/v1/jobs/{job['id']}", headers=red).json()["webhook_status"] == "failed"
    with session_scope() as s:
        assert webhooks.due(s, now=now + timedelta(days=1)) == []


def test_the_webhook_secret_is_the_teams_and_only_its_admin_reads_or_rotates_it(client, keys) -> None:
    red, blue = auth(keys["red"]), auth(keys["blue"])
    first = client.get("/v1/webhook-secret", headers=red).json()
    assert first["header"] == "X-Rlad-Signature" and len(first["secret"]) == 64
    assert client.get("/v1/webhook-secret", headers=red).json() == first  # stable until rotated
    assert client.get("/v1/webhook-secret", headers=blue).json()["secret"] != first["secret"]
    rotated = client.post("/v1/webhook-secret/rotate", headers=red).json()["secret"]
    assert rotated != first["secret"] and client.get("/v1/webhook-secret", headers=red).json()["secret"] == rotated
    write = client.post("/v1/keys", json={"role": "write"}, headers=red).json()["key"]
    assert client.get("/v1/webhook-secret", headers=auth(write)).status_code == 403
