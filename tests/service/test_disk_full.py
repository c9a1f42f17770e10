"""A full result store pauses a job (the trainer process path, in-process): a `disk_full` job event with the
numbers, the job stays running, and it finishes by itself once space is freed. The result store is a small
tmpfs (skipped where mounting is not permitted)."""

from __future__ import annotations

import os
import signal
import threading
import time

from rlad_core import checkpoint as ck
from store import jobs as job_store
from store.db import session_scope
from store.models import JobStatus as S
from store.teams import get_or_create_team
from tests.service.conftest import reset_caches, tiny_spec
from workers.trainer_process import JobReporter

DEADLINE_S = 300.0


def _events(job_id: str) -> list[tuple[str, dict]]:
    with session_scope() as s:
        return [(e.kind.value, dict(e.data or {})) for e in job_store.list_events(s, job_id=job_id)]


def _submit_and_claim(spec: dict) -> tuple[str, str, int]:
    with session_scope() as s:
        team = get_or_create_team(s, name="red")
        job, _ = job_store.submit_job(s, team_id=team.id, spec=spec)
        team_id, job_id = team.id, job.id
    with session_scope() as s:
        return team_id, job_id, job_store.claim_job(s, job_id=job_id, worker="test").attempt


def _run_trainer_process(job_id: str, attempt: int) -> int:
    from workers.trainer_process import run

    handler = signal.getsignal(signal.SIGTERM)
    try:
        return run(job_id, attempt)  # sets a SIGTERM handler, as the trainer process does
    finally:
        signal.signal(signal.SIGTERM, handler)


def _wait_for_disk_full(job_id: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline and not any(k == "disk_full" for k, _ in _events(job_id)):
        time.sleep(0.05)


def test_a_full_result_store_pauses_the_job_which_finishes_once_space_is_freed(
    service_env, micro_models, small_disk, fill_disk, monkeypatch
) -> None:
    disk = small_disk(16 << 20)
    reserve = 256 << 10
    monkeypatch.setenv("RLAD_RESULT_ROOT", str(disk / "results"))
    monkeypatch.setenv("RLAD_DISK_RESERVE_BYTES", str(reserve))
    monkeypatch.setenv("RLAD_DISK_FULL_POLL_S", "0.1")
    reset_caches()

    # once step 1's checkpoint is on disk, a ballast file takes the rest of the result store
    ballast, step1_bytes = [], []
    record = JobReporter.checkpoint

    def checkpoint_then_fill(self, step, path, metrics):
        record(self, step, path, metrics)
        if step == 1:
            step1_bytes.append(sum(p.stat().st_size for p in path.iterdir()))
            ballast.append(fill_disk(disk))

    monkeypatch.setattr(JobReporter, "checkpoint", checkpoint_then_fill)

    _, job_id, attempt = _submit_and_claim(tiny_spec(micro_models, steps=2, checkpoint_every=1, eval_every=0))
    seen: dict = {}

    def free_space_once_paused() -> None:
        try:
            _wait_for_disk_full(job_id)
            with session_scope() as s:
                seen["status_while_paused"] = job_store.status_of(s, job_id=job_id)
        finally:
            if ballast:
                ballast[0].unlink()
                seen["freed_at"] = time.monotonic()

    watcher = threading.Thread(target=free_space_once_paused, daemon=True)
    watcher.start()
    rc = _run_trainer_process(job_id, attempt)
    finished_at = time.monotonic()
    watcher.join()

    with session_scope() as s:
        job = job_store.get_job(s, team_id=None, job_id=job_id)
        assert (rc, job.status, job.error_code) == (0, S.succeeded, None), job.error_message
    assert seen["status_while_paused"] == S.running
    events = _events(job_id)
    (full,) = [data for kind, data in events if kind == "disk_full"]
    job_dir_ckpts = disk / "results" / "jobs" / job_id / "checkpoints"
    # needed: the newest checkpoint's size plus the margin, plus the reserve from the settings
    assert full == {
        "step": 2,
        "needed_bytes": int(step1_bytes[0] * (1 + ck.MARGIN_FRACTION)) + ck.MARGIN_BYTES + reserve,
        "free_bytes": 0,
        "path": str(job_dir_ckpts),
    }
    kinds = [k for k, _ in events]
    assert kinds.index("disk_full") < [i for i, k in enumerate(kinds) if k == "checkpoint_saved"][-1]
    assert [d["step"] for k, d in events if k == "checkpoint_saved"] == [1, 2] and kinds[-1] == "succeeded"
    assert [p.name for p in ck.list_checkpoints(job_dir_ckpts)] == ["step-1", "step-2"]
    assert sorted(p.name for p in job_dir_ckpts.iterdir()) == ["step-1", "step-2"]
    print(
        f"\njob paused at step 2 ({full['needed_bytes']} B needed, {full['free_bytes']} B free); "
        f"finished {finished_at - seen['freed_at']:.2f} s after space was freed"
    )


def test_a_job_waiting_for_disk_space_can_be_cancelled(service_env, micro_models, monkeypatch) -> None:
    monkeypatch.setenv("RLAD_DISK_RESERVE_BYTES", str(1 << 60))  # more than any disk: no checkpoint fits
    monkeypatch.setenv("RLAD_DISK_FULL_POLL_S", "0.1")
    reset_caches()
    team_id, job_id, attempt = _submit_and_claim(tiny_spec(micro_models, steps=2, checkpoint_every=1, eval_every=0))
    seen: dict = {}

    def cancel_once_paused() -> None:
        _wait_for_disk_full(job_id)
        with session_scope() as s:
            seen["status_while_paused"] = job_store.status_of(s, job_id=job_id)
            job_store.request_cancel(s, team_id=team_id, job_id=job_id)
        os.kill(os.getpid(), signal.SIGTERM)  # what the supervisor sends the trainer process on cancel

    watcher = threading.Thread(target=cancel_once_paused, daemon=True)
    watcher.start()
    rc = _run_trainer_process(job_id, attempt)
    watcher.join()

    with session_scope() as s:
        job = job_store.get_job(s, team_id=None, job_id=job_id)
        assert (rc, job.status, job.error_code) == (0, S.cancelled, None), job.error_message
    assert seen["status_while_paused"] == S.running
    kinds = [k for k, _ in _events(job_id)]
    assert kinds.count("disk_full") == 1 and "checkpoint_saved" not in kinds and "failed" not in kinds
    assert kinds[-1] == "cancelled"


def test_a_disk_that_stays_full_fails_the_job_and_the_earlier_checkpoint_stays_downloadable(
    service_env, micro_models, small_disk, fill_disk, monkeypatch
) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from store.teams import create_api_key

    disk = small_disk(16 << 20)
    monkeypatch.setenv("RLAD_RESULT_ROOT", str(disk / "results"))
    monkeypatch.setenv("RLAD_DISK_FULL_POLL_S", "0.1")
    monkeypatch.setenv("RLAD_DISK_FULL_WAIT_S", "1")
    reset_caches()
    record = JobReporter.checkpoint

    def checkpoint_then_fill(self, step, path, metrics):
        record(self, step, path, metrics)
        if step == 1:
            fill_disk(disk)  # and never freed

    monkeypatch.setattr(JobReporter, "checkpoint", checkpoint_then_fill)
    team_id, job_id, attempt = _submit_and_claim(tiny_spec(micro_models, steps=3, checkpoint_every=1, eval_every=0))
    t0 = time.monotonic()
    rc = _run_trainer_process(job_id, attempt)
    took = time.monotonic() - t0

    with session_scope() as s:
        job = job_store.get_job(s, team_id=None, job_id=job_id)
        assert (rc, job.status, job.error_code) == (1, S.failed, "disk_full")
        assert job.error_message.startswith("DiskFull: disk full: ") and "waited 1 s for space" in job.error_message
        key = create_api_key(s, team_name="red")
    events = _events(job_id)
    kinds = [k for k, _ in events]
    assert kinds.count("disk_full") == 1 and kinds[-1] == "failed"
    (failed,) = [d for k, d in events if k == "failed"]
    assert failed["code"] == "disk_full" and str(disk / "results") in failed["message"]
    # step 1 is the job's checkpoint, whole; step 2 left nothing behind
    job_dir_ckpts = disk / "results" / "jobs" / job_id / "checkpoints"
    assert sorted(p.name for p in job_dir_ckpts.iterdir()) == ["step-1"]
    ck.verify_checkpoint(job_dir_ckpts / "step-1")
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        h = {"Authorization": f"Bearer {key}"}
        listed = client.get(f"/v1/jobs/{job_id}/checkpoints", headers=h).json()["items"]
        assert [c["step"] for c in listed] == [1]
        r = client.get(f"/v1/jobs/{job_id}/checkpoints/1/download", headers=h, params={"part": "model"})
        assert r.status_code == 200 and len(r.content) > 10_000
    print(f"\ndisk stayed full: the job failed (disk_full) {took:.1f} s after its trainer started; step 1 intact")
