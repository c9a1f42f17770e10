"""The REST API in-process (TestClient) on SQLite and on PostgreSQL: submit, read, list, cancel, events,
metrics, checkpoints, datasets, auth and team scoping, error bodies."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.service.conftest import auth

SPEC = {"student": "rlad-test/student", "teacher": "rlad-test/teacher", "steps": 5, "batch_size": 8, "group_size": 4}


def submit(client, key: str, spec: dict | None = None, **headers: str):
    return client.post("/v1/jobs", json=spec or SPEC, headers={**auth(key), **headers})


def test_submit_returns_202_with_the_resolved_spec_and_a_queued_event(client, keys) -> None:
    r = submit(client, keys["red"])
    assert r.status_code == 202
    job = r.json()
    assert job["status"] == "queued" and not job["is_terminal"]
    assert job["queue_position"] == 1 and job["total_steps"] == 5 and job["steps_done"] == 0
    assert job["spec"] == SPEC
    assert job["spec_resolved"]["alpha"] == 0.5 and job["spec_resolved"]["method"] == "rlad"
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=auth(keys["red"])).json()["items"]
    assert [e["kind"] for e in events] == ["queued"]
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth(keys["red"])).json()["id"] == job["id"]


def test_invalid_spec_is_422_naming_each_field_and_its_fix(client, keys) -> None:
    r = submit(client, keys["red"], {"student": "s", "steps": 0, "alpah": 0.5, "output_dir": "/tmp/x"})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "invalid_spec"
    fields = {f["field"]: f["message"] for f in err["fields"]}
    assert set(fields) == {"steps", "alpah", "output_dir"}
    assert "fix" in fields["alpah"] and "fix" in fields["output_dir"]
    assert client.get("/v1/jobs", headers=auth(keys["red"])).json()["items"] == []  # nothing was stored


def test_teacher_methods_need_a_teacher(client, keys) -> None:
    r = submit(client, keys["red"], {"student": "s", "method": "rlad"})
    assert r.status_code == 422 and "teacher" in r.text


def test_idempotency_key_same_body_same_job_other_body_409(client, keys) -> None:
    first = submit(client, keys["red"], **{"Idempotency-Key": "abc"})
    again = submit(client, keys["red"], **{"Idempotency-Key": "abc"})
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = submit(client, keys["red"], {**SPEC, "steps": 6}, **{"Idempotency-Key": "abc"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"
    # keys are per team: the same key from another team is a new job
    blue = submit(client, keys["blue"], **{"Idempotency-Key": "abc"})
    assert blue.status_code == 202 and blue.json()["id"] != first.json()["id"]


def test_list_paginates_newest_first_and_filters(client, keys) -> None:
    ids = [
        submit(client, keys["red"], {**SPEC, "method": m}).json()["id"] for m in ("rlad", "grpo", "rlad", "kdrl", "opd")
    ]
    h = auth(keys["red"])
    page1 = client.get("/v1/jobs?limit=2", headers=h).json()
    page2 = client.get(f"/v1/jobs?limit=2&after={page1['next_after']}", headers=h).json()
    page3 = client.get(f"/v1/jobs?limit=2&after={page2['next_after']}", headers=h).json()
    got = [j["id"] for p in (page1, page2, page3) for j in p["items"]]
    assert got == ids[::-1]
    assert page1["has_more"] and page2["has_more"] and not page3["has_more"] and page3["next_after"] is None
    rlad = client.get("/v1/jobs?method=rlad", headers=h).json()["items"]
    assert [j["id"] for j in rlad] == [ids[2], ids[0]]
    client.post(f"/v1/jobs/{ids[1]}/cancel", headers=h)
    cancelled = client.get("/v1/jobs?status=cancelled", headers=h).json()["items"]
    assert [j["id"] for j in cancelled] == [ids[1]]
    queued = client.get("/v1/jobs?status=queued&method=kdrl&method=opd", headers=h).json()["items"]
    assert [j["id"] for j in queued] == [ids[4], ids[3]]
    assert client.get(f"/v1/jobs/{ids[4]}", headers=h).json()["queue_position"] == 4  # ids[1] left the queue


def test_cancel_a_queued_job_is_immediate_and_idempotent(client, keys) -> None:
    job = submit(client, keys["red"]).json()
    h = auth(keys["red"])
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=h)
    assert r.status_code == 202 and r.json()["status"] == "cancelled" and r.json()["is_terminal"]
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=h).json()["status"] == "cancelled"
    kinds = [e["kind"] for e in client.get(f"/v1/jobs/{job['id']}/events", headers=h).json()["items"]]
    assert kinds == ["queued", "cancelled"]


def test_teams_cannot_see_cancel_or_download_each_others_jobs(client, keys) -> None:
    job = submit(client, keys["red"]).json()
    blue = auth(keys["blue"])
    for method, path in [
        ("get", ""),
        ("post", "/cancel"),
        ("get", "/events"),
        ("get", "/metrics"),
        ("get", "/checkpoints"),
        ("get", "/checkpoints/0/download"),
        ("get", "/checkpoints/0"),
    ]:
        r = getattr(client, method)(f"/v1/jobs/{job['id']}{path}", headers=blue)
        assert r.status_code == 404, (method, path, r.status_code)
        assert r.json()["error"]["code"] == "not_found"
    assert client.get("/v1/jobs", headers=blue).json()["items"] == []
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth(keys["red"])).json()["status"] == "queued"


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer nope", "Basic abc"])
def test_missing_or_unknown_key_is_401(client, keys, header: str | None) -> None:
    r = client.get("/v1/jobs", headers={"Authorization": header} if header else {})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "unauthorized"


def test_bad_query_parameters_are_422_naming_the_parameter(client, keys) -> None:
    r = client.get("/v1/jobs?limit=0&status=done", headers=auth(keys["red"]))
    assert r.status_code == 422
    fields = [f["field"] for f in r.json()["error"]["fields"]]
    assert "limit (query)" in fields and any(f.startswith("status") for f in fields)


def test_metrics_read_all_and_downsampled(client, keys) -> None:
    from store import metrics as metric_store
    from store.db import session_scope

    job = submit(client, keys["red"]).json()
    with session_scope() as s:
        metric_store.write_metrics(
            s, job_id=job["id"], rows=[(i, {"loss": float(i), "reward_mean": 1.0}) for i in range(1, 101)]
        )
        metric_store.write_metrics(
            s, job_id=job["id"], rows=[(50, {"loss": float("nan")})]
        )  # upsert, non-finite -> null
    h = auth(keys["red"])
    full = client.get(f"/v1/jobs/{job['id']}/metrics?key=loss", headers=h).json()
    (loss,) = full["series"]
    assert loss["steps"] == list(range(1, 101)) and loss["values"][49] is None and loss["values"][0] == 1.0
    assert full["keys"] == ["loss", "reward_mean"] and not full["downsampled"]
    small = client.get(f"/v1/jobs/{job['id']}/metrics?max_points=10&step_min=1&step_max=100", headers=h).json()
    assert small["downsampled"] and small["bucket"] == 12
    series = {s["key"]: s for s in small["series"]}
    # aligned buckets of 12 steps (a multiple of the rollups' 4), each shown by its first point in the range
    assert series["loss"]["steps"] == [1, 12, 24, 36, 48, 60, 72, 84, 96]
    assert series["loss"]["values"] == [1.0, 12.0, 24.0, 36.0, 48.0, 60.0, 72.0, 84.0, 96.0]
    assert series["reward_mean"]["values"] == [1.0] * 9
    sparse = client.get(
        f"/v1/jobs/{job['id']}/metrics?key=loss&max_points=10&step_min=45&step_max=64", headers=h
    ).json()
    assert sparse["bucket"] == 3 and sparse["series"][0]["steps"] == [45, 48, 51, 54, 57, 60, 63]
    assert sparse["series"][0]["values"][2] == 51.0
    nan = client.get(f"/v1/jobs/{job['id']}/metrics?key=loss&max_points=10&step_min=50&step_max=59", headers=h).json()
    assert nan["bucket"] == 1 and nan["series"][0]["values"][0] is None
    latest = client.get(f"/v1/jobs/{job['id']}/metrics/latest?key=loss&key=nope", headers=h).json()["latest"]
    assert list(latest) == ["loss"] and latest["loss"]["step"] == 100 and latest["loss"]["value"] == 100.0


def test_a_sparse_key_keeps_every_point_when_it_has_fewer_than_max_points(client, keys) -> None:
    from store import metrics as metric_store
    from store.db import session_scope

    job = submit(client, keys["red"]).json()
    with session_scope() as s:
        metric_store.write_metrics(
            s, job_id=job["id"], rows=[(i, {"eval/accuracy": i / 1000}) for i in range(0, 1001, 25)]
        )
        metric_store.write_metrics(s, job_id=job["id"], rows=[(i, {"loss": 1.0}) for i in range(1, 1001)])
    r = client.get(f"/v1/jobs/{job['id']}/metrics?max_points=100", headers=auth(keys["red"])).json()
    series = {s["key"]: s["steps"] for s in r["series"]}
    assert series["eval/accuracy"] == list(range(0, 1001, 25))
    # 1,000 steps in aligned buckets of r["bucket"] steps: one point per bucket, at most 100
    assert len(series["loss"]) == 1000 // r["bucket"] + 1 <= 100 and r["keys"] == ["eval/accuracy", "loss"]


def _fake_checkpoint(job_id: str, step: int, tiny_model: Path) -> None:
    """Record a real checkpoint (a tiny model saved by rlad_core) for `job_id` in the result store."""
    from rlad_core.checkpoint import save_checkpoint
    from rlad_core.models import load_model, load_tokenizer
    from store.db import session_scope
    from store.results import get_result_store, record_checkpoint
    from store.settings import get_settings

    store = get_result_store(get_settings().resolved_result_root)
    path = save_checkpoint(
        store.job_dir(job_id) / "checkpoints",
        step,
        model=load_model(str(tiny_model)),
        tokenizer=load_tokenizer(str(tiny_model)),
        trainer_state={"step": step},
        metrics={"loss": 1.0},
    )
    with session_scope() as s:
        record_checkpoint(
            s,
            job_id=job_id,
            step=step,
            kind="final",
            location=store.checkpoint_location(job_id, step),
            bytes=sum(p.stat().st_size for p in path.rglob("*") if p.is_file()),
            sha256=hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest(),
            metrics={"loss": 1.0},
        )


def test_checkpoint_download_is_a_tar_of_the_hf_directory_with_sha256s(client, keys, micro_models, tmp_path) -> None:
    job = submit(client, keys["red"]).json()
    _fake_checkpoint(job["id"], 3, micro_models["student"])
    h = auth(keys["red"])
    (item,) = client.get(f"/v1/jobs/{job['id']}/checkpoints", headers=h).json()["items"]
    assert item["step"] == 3 and item["download_url"].endswith("/checkpoints/3/download")
    detail = client.get(f"/v1/jobs/{job['id']}/checkpoints/3", headers=h).json()
    files = {f["name"]: f for f in detail["files"]}
    assert {"config.json", "model.safetensors", "tokenizer.json", "manifest.json"} <= set(files)
    r = client.get(item["download_url"], headers=h)
    assert r.status_code == 200 and int(r.headers["content-length"]) == len(r.content)
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        tar.extractall(tmp_path, filter="data")
    root = tmp_path / f"{job['id']}-step-3"
    manifest = json.loads((root / "manifest.json").read_text())
    for name, info in manifest["files"].items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == info["sha256"] == files[name]["sha256"]
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(root).config.vocab_size > 0


def test_single_file_download_supports_range_requests(client, keys, micro_models) -> None:
    job = submit(client, keys["red"]).json()
    _fake_checkpoint(job["id"], 1, micro_models["student"])
    h = auth(keys["red"])
    url = f"/v1/jobs/{job['id']}/checkpoints/1/files/model.safetensors"
    whole = client.get(url, headers=h)
    assert whole.status_code == 200 and whole.headers["x-sha256"] == hashlib.sha256(whole.content).hexdigest()
    part = client.get(url, headers={**h, "Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == whole.content[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(whole.content)}"
    beyond = client.get(url, headers={**h, "Range": f"bytes={len(whole.content) + 10}-"})
    assert beyond.status_code == 416
    assert client.get(f"/v1/jobs/{job['id']}/checkpoints/1/files/../../../api_key", headers=h).status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}/checkpoints/2/files/config.json", headers=h).status_code == 404


def test_dataset_upload_validates_each_line_and_jobs_can_use_it(client, keys) -> None:
    h = auth(keys["red"])
    bad = b'{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2="}\n'
    r = client.post("/v1/datasets", files={"file": ("math.jsonl", bad)}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "line 2"
    good = b'{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", "answer": "4"}\n'
    ds = client.post("/v1/datasets", files={"file": ("math.jsonl", good)}, data={"name": "sums"}, headers=h).json()
    assert ds["lines"] == 2 and ds["name"] == "sums" and ds["task_path"] == f"dataset:{ds['id']}"
    again = client.post("/v1/datasets", files={"file": ("copy.jsonl", good)}, headers=h).json()
    assert again["id"] == ds["id"]  # same bytes, same dataset
    assert [d["id"] for d in client.get("/v1/datasets", headers=h).json()["items"]] == [ds["id"]]
    spec = {**SPEC, "task": {"name": "jsonl", "path": ds["task_path"]}}
    assert submit(client, keys["red"], spec).status_code == 202
    r = submit(client, keys["blue"], spec)  # another team's dataset does not exist for blue
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "task.path"


def test_dataset_over_the_size_limit_is_413(client, keys, monkeypatch) -> None:
    from store.settings import get_settings

    monkeypatch.setattr(get_settings(), "max_upload_bytes", 100)
    big = b'{"prompt": "1+1=", "answer": "2"}\n' * 10
    r = client.post("/v1/datasets", files={"file": ("big.jsonl", big)}, headers=auth(keys["red"]))
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    assert client.get("/v1/datasets", headers=auth(keys["red"])).json()["items"] == []


def test_health_readiness_and_prometheus(client, keys) -> None:
    submit(client, keys["red"])
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    text = client.get("/metrics").text
    assert 'rlad_jobs{queue="gpu",status="queued"} 1.0' in text


def test_readyz_is_503_when_the_broker_is_down(client, monkeypatch) -> None:
    from store.settings import get_settings

    monkeypatch.setattr(get_settings(), "broker_url", "redis://127.0.0.1:1/0")
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"] == {"database": "ok", "broker": "unavailable"}


def test_metrics_stream_sends_each_step_then_ends_with_the_status(client, keys) -> None:
    from store import metrics as metric_store
    from store.db import session_scope

    h = auth(keys["red"])
    job = submit(client, keys["red"]).json()
    with session_scope() as s:
        metric_store.write_metrics(
            s, job_id=job["id"], rows=[(1, {"loss": 0.5}), (2, {"loss": 0.25, "reward_mean": 1.0})]
        )
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=h)
    with client.stream("GET", f"/v1/jobs/{job['id']}/metrics/stream?poll_s=0.1", headers=h) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        body = "".join(r.iter_text())
    frames = [f for f in body.split("\n\n") if f.startswith("id:") or f.startswith("event:")]
    parsed = []
    for f in frames:
        fields = dict(line.split(": ", 1) for line in f.splitlines())
        parsed.append((fields["event"], json.loads(fields["data"])))
    assert parsed == [
        ("metrics", {"step": 1, "values": {"loss": 0.5}}),
        ("metrics", {"step": 2, "values": {"loss": 0.25, "reward_mean": 1.0}}),
        ("end", {"status": "cancelled"}),
    ]


def test_polling_answers_from_the_cache_only_to_the_owner_and_cancel_refreshes_it(client, keys) -> None:
    red, blue = auth(keys["red"]), auth(keys["blue"])
    job = submit(client, keys["red"]).json()
    first = client.get(f"/v1/jobs/{job['id']}", headers=red)
    second = client.get(f"/v1/jobs/{job['id']}", headers=red)  # served by the fast path from the cache
    assert second.status_code == 200 and second.content == first.content
    assert second.headers["content-type"] == "application/json"
    assert client.get(f"/v1/jobs/{job['id']}", headers=blue).status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}", headers={"Authorization": "Bearer wrong"}).status_code == 401
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=red)
    assert client.get(f"/v1/jobs/{job['id']}", headers=red).json()["status"] == "cancelled"


def test_concurrent_misses_of_one_job_share_one_query_and_a_write_during_it_is_not_cached_over(client, keys) -> None:
    import asyncio

    from sqlalchemy import event

    from api.routes.jobs import job_cache
    from store.db import get_engine, session_scope
    from store.errors import NotFound
    from store.teams import team_for_key

    job = submit(client, keys["red"]).json()
    with session_scope() as s:
        team_id = team_for_key(s, key=keys["red"]).id
    queries: list[str] = []

    def count(conn, cursor, statement, *args) -> None:
        if statement.startswith("SELECT jobs.id"):  # one load: the job row (then its queue position)
            queries.append(statement)

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", count)
    try:
        job_cache.drop(job["id"])

        async def twenty() -> list[bytes]:
            return await asyncio.gather(*(job_cache.load(job["id"], team_id, 1.0) for _ in range(20)))

        bodies = asyncio.run(twenty())
        assert len(set(bodies)) == 1 and json.loads(bodies[0])["id"] == job["id"]
        assert len(queries) == 1 and job_cache.get(job["id"], team_id) == bodies[0]

        async def load_then_drop() -> bytes:
            job_cache.drop(job["id"])
            pending = asyncio.ensure_future(job_cache.load(job["id"], team_id, 1.0))
            await asyncio.sleep(0)
            job_cache.drop(job["id"])  # a cancel lands while the query runs
            return await pending

        asyncio.run(load_then_drop())
        assert job_cache.get(job["id"], team_id) is None

        async def missing() -> list[BaseException]:
            return await asyncio.gather(
                *(job_cache.load("job_nope", team_id, 1.0) for _ in range(3)), return_exceptions=True
            )

        assert all(isinstance(e, NotFound) for e in asyncio.run(missing()))
    finally:
        event.remove(engine, "before_cursor_execute", count)
