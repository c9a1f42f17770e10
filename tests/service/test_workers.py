"""The production stack for real: uvicorn, Celery workers (queue gpu: jobs; queue cpu + beat: the reaper) on
Redis, PostgreSQL, the trainer in its own process. Jobs go in over HTTP and come out as checkpoints."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from rlad.service import LocalService
from tests.service.conftest import production_stack, tiny_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    env = {
        "RLAD_REAPER_INTERVAL_S": "1",
        "RLAD_HEARTBEAT_INTERVAL_S": "0.5",
        "RLAD_HEARTBEAT_TIMEOUT_S": "30",
        "RLAD_CANCEL_GRACE_S": "8",
        "RLAD_METRICS_FLUSH_S": "0.5",
        "RLAD_WEBHOOK_POLL_S": "0.5",
        "RLAD_WEBHOOK_BACKOFF_S": "0.5",
        "RLAD_WEBHOOK_MAX_ATTEMPTS": "3",
    }
    with production_stack(tmp_path_factory, "stack", env) as svc:
        yield svc


@pytest.fixture(scope="module")
def http(stack: LocalService) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=30) as c:
        yield c


def wait_for(http: httpx.Client, job_id: str, until, timeout_s: float = 120, poll_s: float = 0.2) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if until(job):
            return job
        if job["is_terminal"] or time.monotonic() > deadline:
            events = http.get(f"/v1/jobs/{job_id}/events").json()["items"]
            raise AssertionError(f"job ended or timed out as {job['status']}: {job['error_message']}\n{events}")
        time.sleep(poll_s)


def events(http: httpx.Client, job_id: str) -> list[dict]:
    return http.get(f"/v1/jobs/{job_id}/events").json()["items"]


def test_a_job_runs_end_to_end_and_its_checkpoint_loads(http, micro_models, tmp_path: Path) -> None:
    job = http.post("/v1/jobs", json=tiny_spec(micro_models)).json()
    done = wait_for(http, job["id"], lambda j: j["status"] == "succeeded")
    assert done["steps_done"] == 4 and done["attempt"] == 1
    kinds = [e["kind"] for e in events(http, job["id"])]
    assert kinds[:3] == ["queued", "claimed", "started"] and kinds[-1] == "succeeded"
    assert kinds.count("checkpoint_saved") == 2 and kinds.count("eval_completed") == 3
    ckpts = http.get(f"/v1/jobs/{job['id']}/checkpoints").json()["items"]
    assert [(c["step"], c["kind"]) for c in ckpts] == [(2, "periodic"), (4, "final")]
    r = http.get(ckpts[-1]["download_url"])
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        tar.extractall(tmp_path, filter="data")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path / f"{job['id']}-step-4"
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    ids = tok("12+34=", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    loss = http.get(f"/v1/jobs/{job['id']}/metrics", params={"key": "loss"}).json()["series"][0]
    assert loss["steps"] == [1, 2, 3, 4]
    samples = http.get(f"/v1/jobs/{job['id']}/samples", params={"limit": 200}).json()["items"]
    # log_samples 0: only the evaluations' greedy samples (at steps 0, 2, 4), newest first
    assert samples and all(x["eval"] for x in samples) and samples[0]["step"] == 4
    assert all(x["prompt"].endswith("=") for x in samples)


def test_a_lora_job_downloads_as_adapter_merged_model_or_all(stack, http, micro_models, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from rlad.client import ApiError, Client

    spec = tiny_spec(micro_models, lora={"r": 4, "alpha": 8}, merge_lora_on_save=True, eval_every=0)
    job = http.post("/v1/jobs", json=spec).json()
    in_full = http.post("/v1/jobs", json=tiny_spec(micro_models, steps=2, eval_every=0)).json()
    for j in (job, in_full):
        wait_for(http, j["id"], lambda j: j["status"] == "succeeded")
    with Client(stack.base_url, stack.api_key) as client:
        got = {part: client.download(job["id"], out_dir=tmp_path, part=part) for part in ("adapter", "merged", "model")}
        full = client.download(job["id"], out_dir=tmp_path)
        with pytest.raises(ApiError) as bad:  # a student trained in full has no adapter
            client.download(in_full["id"], out_dir=tmp_path, part="adapter")
    assert bad.value.status == 404 and "trained in full" in str(bad.value) and "fix: download part" in str(bad.value)
    names = {part: sorted(p.name for p in path.iterdir()) for part, path in got.items()}
    assert got["adapter"].name == f"{job['id']}-step-4-adapter" and full.name == f"{job['id']}-step-4"
    assert names["adapter"] == names["model"] and "adapter_model.safetensors" in names["adapter"]
    assert not {"trainer_state.pt", "merged", "model.safetensors"} & set(names["adapter"])
    assert "model.safetensors" in names["merged"] and "adapter_config.json" not in names["merged"]
    assert {"trainer_state.pt", "merged", "adapter_model.safetensors"} <= {p.name for p in full.iterdir()}
    r = http.get(f"/v1/jobs/{job['id']}/checkpoints/4/download", params={"part": "weights"})
    assert r.status_code == 422 and "part" in r.text
    # both load with transformers (the adapter through peft) and compute the same function
    ids = torch.tensor([[1, 5, 7, 9, 3]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(got["merged"])(ids).logits
        adapted = AutoModelForCausalLM.from_pretrained(got["adapter"])(ids).logits
    assert torch.allclose(merged, adapted, atol=1e-4)


def test_cancel_while_running_stops_within_10s_and_no_metrics_follow(http, micro_models) -> None:
    spec = tiny_spec(micro_models, steps=20_000, eval_every=0, checkpoint_every=0)
    job = http.post("/v1/jobs", json=spec).json()
    running = wait_for(http, job["id"], lambda j: j["status"] == "running" and j["steps_done"] >= 5)
    # the workers registry: both nodes report themselves; the gpu node runs this job
    queue = http.get("/v1/queue").json()
    workers = {w["name"].split("@")[0]: w for w in queue["workers"]}
    assert workers["gpu"]["alive"] and workers["cpu"]["alive"] and workers["gpu"]["queues"] == ["gpu"]
    assert workers["gpu"]["job_id"] == job["id"] == running["id"] and running["worker"] == workers["gpu"]["name"]
    assert {"queue": "gpu", "queued": 0, "running": 1} in queue["queues"]
    t0 = time.monotonic()
    assert http.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelling"
    done = wait_for(http, job["id"], lambda j: j["is_terminal"], timeout_s=30, poll_s=0.1)
    elapsed = time.monotonic() - t0
    assert done["status"] == "cancelled" and elapsed < 10, (done["status"], elapsed)
    evs = events(http, job["id"])
    kinds = [e["kind"] for e in evs]
    assert kinds[-3:] == ["cancel_requested", "checkpoint_saved", "cancelled"], kinds
    cancelled_at = datetime.fromisoformat(evs[-1]["created_at"]).timestamp()
    series = http.get(f"/v1/jobs/{job['id']}/metrics", params={"max_points": 10_000}).json()["series"]
    assert max(t for s in series for t in s["times"]) <= cancelled_at
    time.sleep(1.5)  # nothing arrives later either
    again = http.get(f"/v1/jobs/{job['id']}/metrics", params={"max_points": 10_000}).json()["series"]
    assert again == series
    (ckpt,) = http.get(f"/v1/jobs/{job['id']}/checkpoints").json()["items"]  # the final checkpoint of the stop
    assert ckpt["step"] == done["steps_done"] > 0


def test_pause_checkpoints_and_frees_the_worker_and_resume_continues_from_there(http, micro_models) -> None:
    spec = tiny_spec(micro_models, steps=300, eval_every=0, checkpoint_every=0)
    job = http.post("/v1/jobs", json=spec).json()
    wait_for(http, job["id"], lambda j: j["status"] == "running" and j["steps_done"] >= 3)
    t0 = time.monotonic()
    assert http.post(f"/v1/jobs/{job['id']}/pause").json()["status"] == "pausing"
    paused = wait_for(http, job["id"], lambda j: j["status"] == "paused", timeout_s=30, poll_s=0.1)
    pause_s = time.monotonic() - t0
    step = paused["steps_done"]
    assert paused["worker"] is None and 3 <= step < 300
    kinds = [e["kind"] for e in events(http, job["id"])]
    assert kinds[-3:] == ["pause_requested", "checkpoint_saved", "paused"], kinds
    (ckpt,) = http.get(f"/v1/jobs/{job['id']}/checkpoints").json()["items"]
    assert ckpt["step"] == step
    # the worker is free: another job runs to the end while this one is paused
    other = http.post("/v1/jobs", json=tiny_spec(micro_models, steps=2, eval_every=0)).json()
    wait_for(http, other["id"], lambda j: j["status"] == "succeeded")
    assert http.get(f"/v1/jobs/{job['id']}").json()["status"] == "paused"
    assert http.post(f"/v1/jobs/{job['id']}/resume").json()["status"] == "queued"
    done = wait_for(http, job["id"], lambda j: j["status"] == "succeeded", timeout_s=120)
    evs = events(http, job["id"])
    resumed = [e for e in evs if e["kind"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["data"]["step"] == step and done["attempt"] == 2
    loss = http.get(f"/v1/jobs/{job['id']}/metrics", params={"key": "loss", "max_points": 1000}).json()["series"][0]
    assert loss["steps"] == list(range(1, 301))  # no step lost or repeated across the pause
    print(f"drill: paused at step {step} in {pause_s:.2f} s; resumed from it to step 300")


class _Receiver:
    """A webhook receiver on loopback: records each request; answers `codes` in turn (then 200)."""

    def __init__(self, codes: list[int]) -> None:
        import http.server

        self.requests: list[tuple[dict[str, str], bytes]] = []
        codes = list(codes)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((dict(self.headers), body))
                self.send_response(codes.pop(0) if codes else 200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_a_webhook_is_signed_retried_with_backoff_and_its_tries_are_events(http, micro_models) -> None:
    from store.webhooks import verify

    receiver = _Receiver([500])  # the first try fails, the second is delivered
    try:
        assert (
            http.post("/v1/jobs", params={"webhook_url": "ftp://x/y"}, json=tiny_spec(micro_models)).status_code == 422
        )
        spec = tiny_spec(micro_models, steps=2, eval_every=0)
        job = http.post("/v1/jobs", params={"webhook_url": receiver.url}, json=spec).json()
        assert job["webhook_url"] == receiver.url and job["webhook_status"] == "pending"
        wait_for(http, job["id"], lambda j: j["is_terminal"])
        deadline = time.monotonic() + 30  # the deliveries come after the end: wait for the second try
        while http.get(f"/v1/jobs/{job['id']}").json()["webhook_status"] != "delivered":
            assert time.monotonic() < deadline, events(http, job["id"])
            time.sleep(0.2)
    finally:
        receiver.server.shutdown()
    secret = http.get("/v1/webhook-secret").json()["secret"]
    assert len(receiver.requests) == 2
    for headers, body in receiver.requests:
        assert verify(secret, body, headers["X-Rlad-Signature"]) and headers["X-Rlad-Event"] == "job.finished"
        assert headers["X-Rlad-Delivery"] == f"{job['id']}:1"
    sent = json.loads(receiver.requests[-1][1])
    assert sent["job"]["id"] == job["id"] and sent["job"]["status"] == "succeeded" and sent["job"]["steps_done"] == 2
    tries = [e for e in events(http, job["id"]) if e["kind"].startswith("webhook_")]
    assert [(e["kind"], e["data"]["try"], e["data"]["http_status"]) for e in tries] == [
        ("webhook_failed", 1, 500),
        ("webhook_delivered", 2, 200),
    ]
    assert tries[0]["data"]["final"] is False
    gap = datetime.fromisoformat(tries[1]["created_at"]) - datetime.fromisoformat(tries[0]["created_at"])
    assert gap.total_seconds() >= 0.5  # the backoff
    print(f"drill: webhook failed once (HTTP 500), delivered on the next try {gap.total_seconds():.2f} s later")


def _trainer_pid(job_id: str) -> int | None:
    out = subprocess.run(["pgrep", "-f", f"workers.trainer_process {job_id}"], capture_output=True, text=True).stdout
    pids = [int(p) for p in out.split()]
    return pids[0] if pids else None


def test_trainer_killed_is_lost_requeued_and_resumes_with_continuous_metrics(http, micro_models) -> None:
    spec = tiny_spec(micro_models, steps=300, eval_every=0, checkpoint_every=50)
    job = http.post("/v1/jobs", json=spec).json()
    wait_for(http, job["id"], lambda j: j["status"] == "running" and j["steps_done"] >= 60, poll_s=0.05)
    pid = _trainer_pid(job["id"])
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    done = wait_for(http, job["id"], lambda j: j["status"] == "succeeded", timeout_s=180)
    assert done["attempt"] == 2 and done["steps_done"] == 300
    evs = events(http, job["id"])
    kinds = [e["kind"] for e in evs]
    i = kinds.index("lost")
    assert kinds[i : i + 4] == ["lost", "queued", "claimed", "resumed"], kinds
    assert "signal 9" in evs[i]["data"]["reason"]
    resumed_step = evs[i + 3]["data"]["step"]
    assert resumed_step >= 50 and resumed_step % 50 == 0 and evs[i + 3]["attempt"] == 2
    (loss,) = http.get(f"/v1/jobs/{job['id']}/metrics", params={"key": "loss", "max_points": 1000}).json()["series"]
    assert loss["steps"] == list(range(1, 301))  # no gap, no duplicate


def test_twenty_concurrent_posts_with_one_idempotency_key_make_one_job(http, stack) -> None:
    body = {"student": "nowhere/s", "teacher": "nowhere/t", "steps": 1, "batch_size": 4, "group_size": 2}
    key = f"k-{uuid.uuid4().hex}"
    barrier = threading.Barrier(20)
    results: list[tuple[int, str]] = []

    def post() -> None:
        with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {stack.api_key}"}) as c:
            barrier.wait()
            r = c.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
            results.append((r.status_code, r.json()["id"]))

    threads = [threading.Thread(target=post) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 20 and len({jid for _, jid in results}) == 1
    assert sorted(code for code, _ in results).count(202) == 1 and all(c in (200, 202) for c, _ in results)
    listed = [j for j in http.get("/v1/jobs", params={"limit": 200}).json()["items"] if j["id"] == results[0][1]]
    assert len(listed) == 1
    # the job's model does not exist: it fails with a clear error instead of being retried
    failed = wait_for(http, results[0][1], lambda j: j["is_terminal"], timeout_s=60)
    assert failed["status"] == "failed" and failed["error_code"] == "not_found" and failed["attempt"] == 1
