"""Drill: the embedded service (`rlad up`: SQLite, the filesystem broker) stopped while a job trains, and a
worker that dies under it.

Before the fix the worker's child was SIGKILLed after about 4 s, the job stayed `running` until the heartbeat
timeout, and a worker that exited made `rlad up` stop the whole stack."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest

from rlad.service import LocalService, free_port
from tests.drills.conftest import event_kinds, processes_of, wait_for
from tests.service.conftest import tiny_spec

pytestmark = pytest.mark.slow


def test_stopping_the_embedded_service_releases_the_job_and_the_next_start_resumes_it(
    tmp_path_factory, micro_models
) -> None:
    env = {
        "RLAD_HEARTBEAT_INTERVAL_S": "0.5",
        "RLAD_METRICS_FLUSH_S": "0.5",
        "RLAD_REAPER_INTERVAL_S": "1",
        "RLAD_MODEL_ROOTS": json.dumps([str(tmp_path_factory.getbasetemp())]),
    }
    data, port = tmp_path_factory.mktemp("embedded"), free_port()
    svc = LocalService(data, port=port, env=env)
    svc.start()
    try:
        with httpx.Client(
            base_url=svc.base_url, headers={"Authorization": f"Bearer {svc.api_key}"}, timeout=30
        ) as http:
            job = http.post(
                "/v1/jobs",
                json=tiny_spec(micro_models, steps=400, eval_every=0, checkpoint_every=1000, name="embedded"),
            ).json()
            wait_for(http, job["id"], lambda j: j["status"] == "running" and j["steps_done"] >= 5)
            assert len(processes_of(svc.data_dir)) >= 4  # API, two workers (and their children), the trainer

            # a worker that dies is started again, and the API never stops
            os.killpg(svc.procs["worker-cpu"].pid, signal.SIGKILL)
            svc.procs["worker-cpu"].wait(timeout=30)
            assert [name for name, _ in svc.restart_exited()] == ["worker-cpu"]
            assert http.get("/healthz").status_code == 200
    finally:
        t0 = time.monotonic()
        svc.stop()  # SIGTERM to every process, as `rlad up` on Ctrl-C
        stopped_in = time.monotonic() - t0
    print(f"drill: the embedded service stopped in {stopped_in:.1f} s with a job running")
    assert stopped_in < 60  # the job checkpointed and was released; nothing waited for it to finish

    svc = LocalService(data, port=port, env=env)
    svc.start()
    try:
        with httpx.Client(
            base_url=svc.base_url, headers={"Authorization": f"Bearer {svc.api_key}"}, timeout=30
        ) as http:
            events = http.get(f"/v1/jobs/{job['id']}/events").json()["items"]
            released = [e for e in events if e["kind"] == "released"]
            assert len(released) == 1 and released[0]["data"]["step"] > 0
            done = wait_for(http, job["id"], lambda j: j["status"] == "succeeded")
            assert done["attempt"] == 2 and "lost" not in event_kinds(http, job["id"])
            resumed = [
                e["data"]["step"]
                for e in http.get(f"/v1/jobs/{job['id']}/events").json()["items"]
                if e["kind"] == "resumed"
            ]
            assert resumed == [released[0]["data"]["step"]]
    finally:
        svc.stop()
    assert processes_of(svc.data_dir) == []  # no worker, trainer or API left behind
