"""Jobs on several processes and nodes, for real: Celery workers launch torchrun (gloo on CPU), two workers on
loopback stand for two machines (a gang of two nodes, c10d rendezvous), and the drills kill one rank and one
node's worker mid-run: the attempt is lost and the job resumes from its last checkpoint."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rlad.service import LocalService, worker_command
from tests.service.conftest import production_stack, tiny_spec
from tests.service.test_workers import events, wait_for

pytestmark = pytest.mark.slow

TWO = {"nodes": 1, "gpus_per_node": 2}
TWO_NODES = {"nodes": 2, "gpus_per_node": 1}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    """API, two job workers on queue gpu (`gpu@` and `gpu2@`, the two "machines"), the reaper's worker."""
    env = {
        "RLAD_REAPER_INTERVAL_S": "1",
        "RLAD_HEARTBEAT_INTERVAL_S": "0.5",
        "RLAD_HEARTBEAT_TIMEOUT_S": "20",
        "RLAD_CANCEL_GRACE_S": "15",
        "RLAD_METRICS_FLUSH_S": "0.5",
        "RLAD_GANG_WAIT_S": "60",
        "RLAD_NODE_ADDRESS": "127.0.0.1",
        "OMP_NUM_THREADS": "1",
    }
    with production_stack(tmp_path_factory, "dist", env) as svc:
        svc._spawn("worker-gpu2", worker_command("gpu", hostname="gpu2@%h"))
        yield svc


@pytest.fixture(scope="module")
def http(stack: LocalService) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=30) as c:
        deadline = time.monotonic() + 60
        while sum(w["alive"] for w in c.get("/v1/queue").json()["workers"] if w["name"].startswith("gpu")) < 2:
            assert time.monotonic() < deadline, "the two job workers did not register"
            time.sleep(0.3)
        yield c


def _spec(models: dict[str, Path], resources: dict, **overrides: object) -> dict:
    return tiny_spec(models, device="cpu", batch_size=16, resources=resources, **overrides)


def _seconds_to(http: httpx.Client, job_id: str, kind: str, t0: float, timeout_s: float = 300) -> float:
    """Seconds from `t0` (monotonic) until the job has an event of `kind`."""
    deadline = time.monotonic() + timeout_s
    while kind not in [e["kind"] for e in events(http, job_id)]:
        assert time.monotonic() < deadline, events(http, job_id)
        time.sleep(0.1)
    return time.monotonic() - t0


def _ranks(job_id: str) -> dict[int, int]:
    """RANK -> pid of the job's trainer processes started by torchrun."""
    out = {}
    for p in Path("/proc").iterdir():
        try:
            if not p.name.isdigit() or job_id.encode() not in (p / "cmdline").read_bytes():
                continue
            env = dict(v.split(b"=", 1) for v in (p / "environ").read_bytes().split(b"\0") if b"=" in v)
        except OSError:
            continue
        if b"RANK" in env and b"workers.trainer_process" in (p / "cmdline").read_bytes():
            out[int(env[b"RANK"])] = int(p.name)
    return out


def test_a_job_on_two_processes_runs_under_torchrun(http, micro_models) -> None:
    job = http.post("/v1/jobs", json=_spec(micro_models, TWO)).json()
    done = wait_for(http, job["id"], lambda j: j["status"] == "succeeded", timeout_s=180)
    assert done["steps_done"] == 4 and done["attempt"] == 1
    evs = events(http, job["id"])
    started = next(e for e in evs if e["kind"] == "started")
    assert started["data"]["processes"] == 2 and started["data"]["memory_gib"]["total"] > 0  # per process
    ckpts = http.get(f"/v1/jobs/{job['id']}/checkpoints").json()["items"]
    assert [c["step"] for c in ckpts] == [2, 4]
    (loss,) = http.get(f"/v1/jobs/{job['id']}/metrics", params={"key": "loss"}).json()["series"]
    assert loss["steps"] == [1, 2, 3, 4]  # reported once (rank 0), not once per process


def _resumed_after_a_loss(http: httpx.Client, job_id: str, steps: int) -> dict:
    """The job succeeded on attempt 2 after one lost attempt, from a checkpoint, with every step's metrics
    once; no rank of either attempt is left running. Returns the loss event."""
    done = wait_for(http, job_id, lambda j: j["status"] == "succeeded", timeout_s=300)
    assert done["attempt"] == 2 and done["steps_done"] == steps
    evs = events(http, job_id)
    kinds = [e["kind"] for e in evs]
    i = kinds.index("lost")
    assert kinds[i : i + 4] == ["lost", "queued", "claimed", "resumed"], kinds
    assert evs[i + 3]["data"]["step"] >= 25 and evs[i + 3]["data"]["processes"] == 2
    (loss,) = http.get(f"/v1/jobs/{job_id}/metrics", params={"key": "loss", "max_points": 1000}).json()["series"]
    assert loss["steps"] == list(range(1, steps + 1))
    _no_ranks_left(job_id)
    return evs[i]


def _no_ranks_left(job_id: str) -> None:
    deadline = time.monotonic() + 30  # the last processes exit just after the end is recorded
    while _ranks(job_id):
        assert time.monotonic() < deadline, _ranks(job_id)
        time.sleep(0.2)


def test_a_killed_rank_ends_the_process_group_and_the_job_resumes(http, micro_models) -> None:
    spec = _spec(micro_models, TWO, steps=200, eval_every=0, checkpoint_every=25)
    job = http.post("/v1/jobs", json=spec).json()
    wait_for(http, job["id"], lambda j: j["status"] == "running" and j["steps_done"] >= 30, timeout_s=180)
    ranks = _ranks(job["id"])
    assert sorted(ranks) == [0, 1], ranks
    t0 = time.monotonic()
    os.kill(ranks[1], signal.SIGKILL)
    to_lost, to_resumed = _seconds_to(http, job["id"], "lost", t0), _seconds_to(http, job["id"], "resumed", t0)
    print(f"drill: kill -9 rank 1 -> lost in {to_lost:.1f} s, resumed in {to_resumed:.1f} s")
    lost = _resumed_after_a_loss(http, job["id"], 200)
    assert "process group ended without a result" in lost["data"]["reason"]


def test_a_job_on_two_nodes_is_claimed_by_two_workers_and_runs_to_completion(http, micro_models) -> None:
    job = http.post("/v1/jobs", json=_spec(micro_models, TWO_NODES)).json()
    done = wait_for(http, job["id"], lambda j: j["status"] == "succeeded", timeout_s=240)
    assert done["steps_done"] == 4 and done["attempt"] == 1
    evs = events(http, job["id"])
    claimed = next(e for e in evs if e["kind"] == "claimed")
    assert sorted(n.split("@")[0] for n in claimed["data"]["nodes"]) == ["gpu", "gpu2"]
    assert next(e for e in evs if e["kind"] == "started")["data"]["processes"] == 2


def test_a_node_whose_worker_is_killed_loses_the_attempt_and_the_job_resumes(http, stack, micro_models) -> None:
    spec = _spec(micro_models, TWO_NODES, steps=200, eval_every=0, checkpoint_every=25)
    job = http.post("/v1/jobs", json=spec).json()
    wait_for(http, job["id"], lambda j: j["status"] == "running" and j["steps_done"] >= 30, timeout_s=240)
    # kill -9 the second machine's worker (its Celery processes; torchrun and the rank die with them)
    t0 = time.monotonic()
    os.killpg(stack.procs["worker-gpu2"].pid, signal.SIGKILL)
    stack.procs["worker-gpu2"].wait(timeout=30)
    # the other node's process group breaks up: its supervisor records the loss (well before the heartbeat timeout)
    to_lost = _seconds_to(http, job["id"], "lost", t0, timeout_s=60)
    assert [n for n, _ in stack.restart_exited()] == ["worker-gpu2"]  # the machine comes back
    to_resumed = _seconds_to(http, job["id"], "resumed", t0)
    print(f"drill: kill -9 node 2's worker -> lost in {to_lost:.1f} s, resumed in {to_resumed:.1f} s")
    _resumed_after_a_loss(http, job["id"], 200)


def test_cancelling_a_job_on_two_processes_checkpoints_and_stops_every_rank(http, micro_models) -> None:
    spec = _spec(micro_models, TWO, steps=20_000, eval_every=0, checkpoint_every=0)
    job = http.post("/v1/jobs", json=spec).json()
    wait_for(http, job["id"], lambda j: j["status"] == "running" and j["steps_done"] >= 5, timeout_s=180)
    assert http.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelling"
    done = wait_for(http, job["id"], lambda j: j["is_terminal"], timeout_s=60)
    assert done["status"] == "cancelled"
    kinds = [e["kind"] for e in events(http, job["id"])]
    assert kinds[-3:] == ["cancel_requested", "checkpoint_saved", "cancelled"], kinds
    _no_ranks_left(job["id"])


def test_a_node_told_to_stop_stops_the_whole_job_which_is_released_and_resumes(http, stack, micro_models) -> None:
    """SIGTERM to one node's worker (a deploy): every rank on both nodes stops at the same step, rank 0 saves a
    checkpoint there, the job goes back to the queue (one message per node) and resumes from that step."""
    spec = _spec(micro_models, TWO_NODES, steps=300, eval_every=0, checkpoint_every=1000)
    job = http.post("/v1/jobs", json=spec).json()
    wait_for(http, job["id"], lambda j: j["status"] == "running" and j["steps_done"] >= 10, timeout_s=240)
    worker = stack.procs["worker-gpu2"]
    t0 = time.monotonic()
    os.kill(worker.pid, signal.SIGTERM)
    worker.wait(timeout=60)
    print(f"drill: SIGTERM to node 2's worker -> checkpointed, released in {time.monotonic() - t0:.1f} s")
    evs = events(http, job["id"])
    rel = next(e for e in evs if e["kind"] == "released")
    ckpt = [e for e in evs if e["kind"] == "checkpoint_saved"]
    assert ckpt and ckpt[-1]["data"]["step"] == rel["data"]["step"] > 0 and "lost" not in [e["kind"] for e in evs]
    assert [n for n, _ in stack.restart_exited()] == ["worker-gpu2"]
    done = wait_for(http, job["id"], lambda j: j["status"] == "succeeded", timeout_s=300)
    assert done["attempt"] == 2
    resumed = [e for e in events(http, job["id"]) if e["kind"] == "resumed"]
    assert [e["data"]["step"] for e in resumed] == [rel["data"]["step"]]
