"""Drill: the result store fills up while a job trains on the production stack (its own PostgreSQL and Redis;
the result store a 16 MiB tmpfs, skipped where mounting is not permitted). The checkpoint that does not fit
waits RLAD_DISK_FULL_WAIT_S (1 s here), then the job fails with an event naming the cause; the checkpoint
before it stays listed, downloadable and loadable, and nothing half-written is listed or left behind."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from transformers import AutoModelForCausalLM

from rlad.client import Client
from rlad.service import LocalService
from tests.drills.conftest import wait_for
from tests.service.conftest import free_port, tiny_spec

pytestmark = pytest.mark.slow

STEPS, EVERY = 600, 300


def test_a_full_result_store_fails_the_job_and_keeps_its_last_checkpoint(
    private_pg, private_redis, micro_models, small_disk, fill_disk, tmp_path, tmp_path_factory
) -> None:
    disk = small_disk(16 << 20)
    svc = LocalService(
        tmp_path / "data",
        port=free_port(),
        env={
            "RLAD_DATABASE_URL": private_pg.url,
            "RLAD_BROKER_URL": private_redis.url,
            "RLAD_RESULT_ROOT": str(disk),
            "RLAD_METRICS_FLUSH_S": "0.2",
            "RLAD_DISK_FULL_POLL_S": "0.1",
            "RLAD_DISK_FULL_WAIT_S": "1",
            "RLAD_MODEL_ROOTS": json.dumps([str(tmp_path_factory.getbasetemp())]),
        },
    )
    svc.start()
    try:
        with httpx.Client(
            base_url=svc.base_url, headers={"Authorization": f"Bearer {svc.api_key}"}, timeout=30
        ) as http:
            spec = tiny_spec(micro_models, steps=STEPS, eval_every=0, checkpoint_every=EVERY, name="disk-full")
            job = http.post("/v1/jobs", json=spec).json()
            wait_for(http, job["id"], lambda j: any(c["step"] == EVERY for c in _checkpoints(http, j["id"])))
            fill_disk(disk)  # the rest of the result store, before the step-200 checkpoint
            filled = time.monotonic()
            done = wait_for(http, job["id"], lambda j: j["is_terminal"])
            failed_in = time.monotonic() - filled

            assert (done["status"], done["error_code"]) == ("failed", "disk_full"), done
            ckpt_dir = disk / "jobs" / job["id"] / "checkpoints"
            assert f"free at {ckpt_dir}" in done["error_message"] and "waited 1 s for space" in done["error_message"]
            events = http.get(f"/v1/jobs/{job['id']}/events").json()["items"]
            (full,) = [e["data"] for e in events if e["kind"] == "disk_full"]
            assert full["step"] == 2 * EVERY and full["free_bytes"] < full["needed_bytes"]
            assert full["path"] == str(ckpt_dir)
            assert events[-1]["kind"] == "failed" and events[-1]["data"]["code"] == "disk_full"
            assert [c["step"] for c in _checkpoints(http, job["id"])] == [EVERY]  # nothing half-written listed
            assert sorted(p.name for p in ckpt_dir.iterdir()) == [f"step-{EVERY}"]  # nor left on disk

        # the checkpoint before the full disk downloads (checked against its manifest) and loads
        with Client(svc.base_url, svc.api_key) as client:
            got = client.download(job["id"], EVERY, out_dir=tmp_path / "dl", part="model")
        model = AutoModelForCausalLM.from_pretrained(got)
        assert model.num_parameters() > 0
    finally:
        svc.stop()
    print(
        f"\ndrill: result store full at step {full['step']} ({full['needed_bytes']} B needed, {full['free_bytes']} B "
        f"free): the job failed (disk_full) {failed_in:.1f} s after the disk filled; step {EVERY} listed, downloaded "
        "and loaded; nothing half-written"
    )


def _checkpoints(http: httpx.Client, job_id: str) -> list[dict]:
    return http.get(f"/v1/jobs/{job_id}/checkpoints").json()["items"]
