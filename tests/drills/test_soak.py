"""Drill: a soak. 100 tiny jobs submitted at once to two job workers; 30 of them cancelled at random moments
(some still queued, some running); one job worker killed (kill -9 of its whole process group) once half the
jobs have ended, at the worst moment for its job (while the trainer writes a checkpoint), then started again, as
`rlad up` restarts a process that exits.

Afterwards: every job ended (succeeded, or cancelled if we asked), the killed worker's job was recovered (lost
then resumed from its checkpoint, or cancelled if it was being cancelled), no trainer process is left, and the
result store holds exactly the checkpoints the database lists: no folder without a row, no row without a
folder, no temporary (half-written) checkpoint directory."""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Engine

from rlad.service import LocalService, worker_command
from rlad_core.layout import MANIFEST, step_of
from store.models import Checkpoint, Job, JobEvent
from tests.drills.conftest import processes_of
from tests.service.conftest import tiny_spec

pytestmark = pytest.mark.slow

N_JOBS, N_CANCEL = 100, 30
STEPS = 6  # checkpoint at every step: a killed or cancelled run always has one to resume or to end on
SEED = int(os.environ.get("RLAD_SOAK_SEED", "20240917"))
DEADLINE_S = 360.0  # every job terminal within this (measured on 2 cores: 168-220 s, a trainer's start dominates)
TERMINAL = {"succeeded", "failed", "cancelled"}
ACTIVE = {"starting", "running", "cancelling", "pausing"}


@pytest.fixture(scope="module")
def soak_stack(drill_stack: LocalService, http: httpx.Client) -> Iterator[LocalService]:
    """The drill stack with a second job worker (another node name on queue gpu); both alive."""
    drill_stack._spawn("worker-gpu2", worker_command("gpu", hostname="gpu2@%h"))
    deadline = time.monotonic() + 90
    while sum(w["alive"] for w in http.get("/v1/queue").json()["workers"] if w["name"].startswith("gpu")) < 2:
        assert time.monotonic() < deadline, "the two job workers did not register"
        time.sleep(0.3)
    yield drill_stack


@pytest.fixture(scope="module")
def db(private_pg) -> Iterator[Engine]:
    engine = create_engine(private_pg.url, pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


def _snapshot(db: Engine) -> dict[str, tuple[str, str | None, int, int]]:
    """Job id -> (status, worker, last step, attempt), straight from the database (cheaper than 100 GETs)."""
    with db.connect() as c:
        rows = c.execute(select(Job.id, Job.status, Job.worker, Job.last_step, Job.attempt))
        return {i: (str(s.value if hasattr(s, "value") else s), w, step, a) for i, s, w, step, a in rows}


def _events(db: Engine, job_id: str) -> list[tuple[str, int, dict]]:
    with db.connect() as c:
        rows = c.execute(
            select(JobEvent.kind, JobEvent.attempt, JobEvent.data)
            .where(JobEvent.job_id == job_id)
            .order_by(JobEvent.id)
        )
        return [(str(k.value if hasattr(k, "value") else k), a, d) for k, a, d in rows]


def _trainers(data_dir: Path) -> dict[int, str]:
    """pid -> command line of the trainer processes of the service."""
    out = {}
    for pid in processes_of(data_dir):
        try:
            cmd = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "workers.trainer_process" in cmd:
            out[pid] = cmd
    return out


def _result_root(svc: LocalService) -> Path:
    """As `Settings.resolved_result_root` resolves it in the service's processes."""
    return Path(svc.env.get("RLAD_RESULT_ROOT") or svc.data_dir / "results").resolve()


def _kill_while_checkpointing(svc: LocalService, name: str, job_id: str) -> dict | None:
    """kill -9 of the worker `name` (its whole process group, as the OOM killer or a crashed host would), the
    moment the trainer of `job_id` has a checkpoint half-written (its temporary directory exists); None if the
    job ended first (then nothing was killed)."""
    ckpts = _result_root(svc) / "jobs" / job_id / "checkpoints"
    trainers = [p for p, cmd in _trainers(svc.data_dir).items() if job_id in cmd]
    until = time.monotonic() + 5
    while time.monotonic() < until:
        try:
            writing = [e.name for e in os.scandir(ckpts) if e.name.startswith(".tmp-")]
        except FileNotFoundError:
            writing = []
        if writing:
            break
        if not trainers or not all(Path(f"/proc/{p}").exists() for p in trainers):
            return None
    else:
        return None
    proc = svc.procs[name]
    t_kill, wall = time.monotonic(), time.time()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return {"worker": name, "job": job_id, "trainers": trainers, "at": t_kill, "wall": wall, "writing": writing}


def test_soak_100_jobs_30_cancelled_one_worker_killed(soak_stack: LocalService, http: httpx.Client, db, micro_models):
    svc = soak_stack
    rng = random.Random(SEED)
    t0 = time.monotonic()

    ids = []
    for i in range(N_JOBS):
        # one thread each: two trainers share this machine's two cores with the service
        spec = tiny_spec(micro_models, steps=STEPS, checkpoint_every=1, eval_every=0, threads=1, name=f"soak-{i}")
        r = http.post("/v1/jobs", json=spec)
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    submitted_in = time.monotonic() - t0

    # cancel moments: when so many jobs have succeeded (random, over most of the run)
    triggers = sorted(rng.randrange(0, N_JOBS - N_CANCEL - 5) for _ in range(N_CANCEL))
    asked: dict[str, str] = {}  # job id -> its status when the cancel was asked
    cancel_answer: dict[str, str] = {}  # job id -> the status the cancel request answered
    killed: dict | None = None
    kill_armed_at: float | None = None
    deadline = t0 + DEADLINE_S

    while True:
        snap = _snapshot(db)
        states = {i: snap[i][0] for i in ids}
        succeeded = sum(s == "succeeded" for s in states.values())
        terminal = sum(s in TERMINAL for s in states.values())
        if terminal == N_JOBS:
            break
        assert time.monotonic() < deadline, f"not every job ended within {DEADLINE_S:.0f} s: " + str(
            {s: sum(v == s for v in states.values()) for s in set(states.values())}
        )

        # the cancellations due now: half of them aimed at a job a worker holds (when there is one), the other
        # half at any job not ended yet (mostly queued ones)
        while triggers and triggers[0] <= succeeded:
            triggers.pop(0)
            # (not the killed worker's job once it is recovering: it is to show a resume)
            open_ = sorted(
                i for i in ids if states[i] not in TERMINAL and i not in asked and i != (killed or {}).get("job")
            )
            held = [i for i in open_ if states[i] in ACTIVE]
            pool = held if held and rng.random() < 0.5 else open_
            if not pool:
                continue
            victim = rng.choice(pool)
            asked[victim] = states[victim]
            r = http.post(f"/v1/jobs/{victim}/cancel")
            assert r.status_code == 202, r.text
            cancel_answer[victim] = r.json()["status"]

        # half-way: kill -9 a job worker while it trains a job that has a checkpoint (steps done >= 2: the step-1
        # checkpoint is recorded, as checkpoints are written before the next step starts), at the worst moment:
        # while the trainer writes its next checkpoint
        if killed is None and terminal >= N_JOBS // 2:
            kill_armed_at = kill_armed_at or time.monotonic()
            running = [
                (name, i)
                for name, node in (("worker-gpu", "gpu@"), ("worker-gpu2", "gpu2@"))
                for i in ids
                if snap[i][0] == "running" and (snap[i][1] or "").startswith(node) and snap[i][2] >= 2
            ]
            if running:
                name, job_id = rng.choice(running)
                killed = _kill_while_checkpointing(svc, name, job_id)
                if killed is not None:
                    killed.update(step=snap[job_id][2], attempt=snap[job_id][3], terminal=terminal)
                    assert svc.restart_exited() == [(name, -signal.SIGKILL)]
            if killed is None:
                assert time.monotonic() - kill_armed_at < 90, "no job worker trained a job to kill it under"
        time.sleep(0.25)
    all_ended_in = time.monotonic() - t0

    # ----- every job ended as it should ---------------------------------------------------------------------
    final = {i: http.get(f"/v1/jobs/{i}").json() for i in ids}
    failed = {i: (j["error_code"], j["error_message"]) for i, j in final.items() if j["status"] == "failed"}
    assert not failed, failed
    cancelled = {i for i, j in final.items() if j["status"] == "cancelled"}
    assert len(asked) == N_CANCEL
    assert cancelled <= set(asked), cancelled - set(asked)
    assert all(j["status"] == "succeeded" and j["steps_done"] == STEPS for i, j in final.items() if i not in cancelled)

    # ----- the killed worker's job was recovered --------------------------------------------------------------
    assert killed is not None
    ev = _events(db, killed["job"])
    kinds = [k for k, _, _ in ev]
    lost = [d for k, a, d in ev if k == "lost" and a == killed["attempt"]]
    if final[killed["job"]]["status"] == "cancelled" and not lost:
        # it was being cancelled: a worker gone while cancelling ends the job cancelled (no retry)
        assert killed["job"] in asked, kinds
        recovery = "cancelled (it was being cancelled)"
    else:
        assert len(lost) == 1, kinds
        later = [(k, a, d) for k, a, d in ev if a > killed["attempt"]]
        resumed = [d for k, _, d in later if k == "resumed"]
        if final[killed["job"]]["status"] == "succeeded":
            # the next attempt continued from the checkpoint the killed one had reached (step >= 1)
            assert resumed and resumed[0]["step"] >= 1, kinds
            assert final[killed["job"]]["attempt"] == killed["attempt"] + 1
        recovery = f"lost ({lost[0].get('reason')}), then {final[killed['job']]['status']}" + (
            f", resumed from step {resumed[0]['step']}" if resumed else ""
        )
    # only that job lost an attempt
    with db.connect() as c:
        lost_jobs = set(c.scalars(select(JobEvent.job_id).where(JobEvent.kind == "lost")))
    assert lost_jobs <= {killed["job"]}, lost_jobs
    # its trainer died with the worker
    gone_by = time.monotonic() + 10
    while any(Path(f"/proc/{p}").exists() for p in killed["trainers"]):
        assert time.monotonic() < gone_by, f"the killed worker's trainer {killed['trainers']} outlived it"
        time.sleep(0.2)
    with db.connect() as c:  # seconds from the kill to the first lost / queued again / resumed of the job
        after_kill = {
            kind: round(at.timestamp() - killed["wall"], 1)
            for kind in ("lost", "queued", "resumed", "cancelled")
            if (
                at := c.scalar(
                    select(JobEvent.created_at)
                    .where(
                        JobEvent.job_id == killed["job"], JobEvent.kind == kind, JobEvent.attempt >= killed["attempt"]
                    )
                    .order_by(JobEvent.id)
                    .limit(1)
                )
            )
        }

    # ----- no process left but the service's own -----------------------------------------------------------
    gone_by = time.monotonic() + 30  # a trainer exits just after it recorded the end
    while left := _trainers(svc.data_dir):
        assert time.monotonic() < gone_by, f"trainer processes left after every job ended: {left}"
        time.sleep(0.2)
    groups = {p.pid for p in svc.procs.values()}
    strays = []
    for pid in processes_of(svc.data_dir):
        try:
            if os.getpgid(pid) not in groups:
                strays.append((pid, Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (ProcessLookupError, OSError):
            continue
    assert not strays, strays

    # ----- the result store holds exactly the checkpoints the database lists ------------------------------
    root = _result_root(svc)
    on_disk, partial = set(), []
    for job_dir in (root / "jobs").iterdir() if (root / "jobs").is_dir() else []:
        ckpts = job_dir / "checkpoints"
        assert job_dir.name in final, f"a folder for no job: {job_dir}"
        for p in ckpts.iterdir() if ckpts.is_dir() else []:
            if step_of(p) is not None and (p / MANIFEST).is_file():
                on_disk.add(p.relative_to(root).as_posix())
            else:
                partial.append(p.relative_to(root).as_posix())
    with db.connect() as c:
        rows = {(j, s, loc) for j, s, loc in c.execute(select(Checkpoint.job_id, Checkpoint.step, Checkpoint.location))}
    in_db = {loc for _, _, loc in rows}
    assert all(loc == f"jobs/{j}/checkpoints/step-{s}" for j, s, loc in rows), rows
    no_row, no_folder = sorted(on_disk - in_db), sorted(in_db - on_disk)
    assert not no_folder, f"checkpoint rows without a folder: {no_folder}"
    # the kill cut a checkpoint short: the next attempt removed its temporary directory (or recorded it, when the
    # kill came between the rename and the row: workers.trainer_process._adopt_leftovers)
    assert not partial, f"temporary or incomplete checkpoint folders: {partial}"
    assert not no_row, f"checkpoint folders without a row: {no_row}"
    no_final = [
        i for i, j in final.items() if j["status"] == "succeeded" and f"jobs/{i}/checkpoints/step-{STEPS}" not in in_db
    ]
    assert not no_final, f"succeeded without its final checkpoint listed: {no_final}"

    while_queued = sum(a == "cancelled" for a in cancel_answer.values())
    while_held = sum(a == "cancelling" for a in cancel_answer.values())
    print(
        f"\ndrill: soak of {N_JOBS} jobs x {STEPS} steps on 2 job workers (seed {SEED}): submitted in "
        f"{submitted_in:.1f} s, all ended in {all_ended_in:.1f} s; {N_JOBS - len(cancelled)} succeeded, "
        f"{len(cancelled)} cancelled of {len(asked)} asked ({while_queued} while queued, {while_held} while held by "
        f"a worker, {len(asked) - while_queued - while_held} after they ended); {killed['worker']} killed at "
        f"{killed['at'] - t0:.1f} s ({killed['terminal']} jobs ended) while its job at step {killed['step']} wrote "
        f"{killed['writing']}: {recovery} (seconds after the kill: {after_kill}); {len(in_db)} checkpoint rows, "
        "as many folders, none half-written; no trainer left"
    )
