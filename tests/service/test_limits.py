"""Limits per team and per key, on SQLite and PostgreSQL: steps x batch size per job, storage (checkpoints and
datasets, shown at GET /v1/usage), request rate per key (429 with Retry-After, the poll fast path included).
Over a limit: a 4xx naming the limit and its value, and nothing stored."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.service.conftest import auth, reset_caches, tiny_spec


@pytest.fixture
def limited(service_env, monkeypatch) -> Iterator:
    """An in-process API whose limits are small enough to reach in a test."""
    from fastapi.testclient import TestClient

    from api.app import create_app

    for name, value in {
        "RLAD_MAX_ROLLOUTS_PER_JOB": "100",
        "RLAD_MAX_STORAGE_BYTES_PER_TEAM": "1000",
        "RLAD_RATE_LIMIT_PER_S": "2",
        "RLAD_RATE_LIMIT_BURST": "4",
    }.items():
        monkeypatch.setenv(name, value)
    reset_caches()
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c
    reset_caches()


def _jobs(client, key: str) -> int:
    return len(client.get("/v1/jobs", headers=auth(key)).json()["items"])


def _upload(client, key: str, lines: int, tag: str):
    body = "".join(f'{{"prompt": "{tag} {i}+1=", "answer": "{i + 1}"}}\n' for i in range(lines)).encode()
    return client.post("/v1/datasets", files={"file": ("d.jsonl", body)}, headers=auth(key)), len(body)


def test_a_job_over_the_rollout_limit_is_refused_naming_it(limited, keys, micro_models) -> None:
    ok = limited.post("/v1/jobs", json=tiny_spec(micro_models, steps=12), headers=auth(keys["red"]))  # 96
    assert ok.status_code == 202, ok.text
    r = limited.post("/v1/jobs", json=tiny_spec(micro_models, steps=13), headers=auth(keys["red"]))  # 104
    assert r.status_code == 422, r.text
    (field,) = r.json()["error"]["fields"]
    assert field["field"] == "steps" and "104 rollouts" in field["message"] and "limit of 100" in field["message"]
    assert "max_rollouts_per_job" in field["message"] and "fix:" in field["message"]
    time.sleep(0.5)  # the rate limit's bucket refills
    assert _jobs(limited, keys["red"]) == 1


def test_storage_is_shown_and_its_limit_refuses_new_uploads_and_jobs(limited, keys, micro_models) -> None:
    from store.db import session_scope
    from store.results import record_checkpoint

    red = keys["red"]
    first, size = _upload(limited, red, 16, "a")
    assert first.status_code == 201 and 500 < size < 1000, (first.text, size)
    usage = limited.get("/v1/usage", headers=auth(red)).json()
    assert usage["dataset_bytes"] == size and usage["storage_bytes"] == size and usage["max_storage_bytes"] == 1000
    assert usage["max_rollouts_per_job"] == 100 and usage["rate_limit_per_s"] == 2 and usage["datasets"] == 1
    time.sleep(1.5)
    again, _ = _upload(limited, red, 16, "a")  # the same bytes: stored once, nothing added
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"]
    over, _ = _upload(limited, red, 16, "b")
    assert over.status_code == 429 and over.json()["error"]["code"] == "quota_exceeded"
    assert "max_storage_bytes_per_team=1000" in over.text and f"stores {size} bytes" in over.text
    time.sleep(1.5)
    job = limited.post("/v1/jobs", json=tiny_spec(micro_models), headers=auth(red)).json()
    with session_scope() as s:  # the job's checkpoint takes the team over its limit
        record_checkpoint(
            s, job_id=job["id"], step=2, kind="periodic", location="x", bytes=600, sha256="0" * 64, metrics={}
        )
    refused = limited.post("/v1/jobs", json=tiny_spec(micro_models), headers=auth(red))
    assert refused.status_code == 429 and "max_storage_bytes_per_team=1000" in refused.text
    time.sleep(1.5)
    usage = limited.get("/v1/usage", headers=auth(red)).json()
    assert usage["checkpoint_bytes"] == 600 and usage["storage_bytes"] == size + 600 and usage["active_jobs"] == 1
    assert _jobs(limited, red) == 1  # nothing stored by the refused submission
    blue = limited.post("/v1/jobs", json=tiny_spec(micro_models), headers=auth(keys["blue"]))
    assert blue.status_code == 202  # another team's storage is its own


def test_a_key_over_its_rate_gets_429_with_retry_after_and_others_do_not(limited, keys, micro_models) -> None:
    red, blue = keys["red"], keys["blue"]
    job = limited.post("/v1/jobs", json=tiny_spec(micro_models), headers=auth(red)).json()
    codes = [limited.get(f"/v1/jobs/{job['id']}", headers=auth(red)).status_code for _ in range(6)]
    assert codes[:3] == [200, 200, 200] and 429 in codes  # burst 4 (the submission took one), then refused
    r = limited.get("/v1/jobs", headers=auth(red))
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert "rate_limit_per_s" in r.text and "fix:" in r.text
    assert limited.get("/v1/jobs", headers=auth(blue)).status_code == 200  # each key its own bucket
    time.sleep(0.6)  # 2 a second: one token back
    assert limited.get(f"/v1/jobs/{job['id']}", headers=auth(red)).status_code == 200
    assert limited.get("/v1/jobs", headers=auth(red)).status_code == 429


def test_token_buckets_refill_at_their_rate_up_to_the_burst() -> None:
    from api.ratelimit import TokenBuckets

    b = TokenBuckets(rate=2, burst=3)
    assert [b.take("k", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take("k", now=0.0) == pytest.approx(0.5)
    assert b.take("k", now=0.5) == 0.0 and b.take("k", now=0.5) == pytest.approx(0.5)
    assert [b.take("k", now=100.0) for _ in range(4)][-1] == pytest.approx(0.5)  # never more than the burst
    assert TokenBuckets(rate=0, burst=1).take("k") == 0.0  # no limit
