"""Drill fixtures: a PostgreSQL server and a Redis server of the drill's own (temporary data, a free port on
127.0.0.1), so that a drill can restart them without touching the machine's shared instances."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from rlad.service import LocalService
from tests.service.conftest import free_port, micro_models  # noqa: F401 (the fixture, for the drills)


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else (Path(p).parent if (p := shutil.which("pg_ctl")) else None)


class PrivatePostgres:
    """`initdb` + `pg_ctl` on a temporary directory; as root the server runs as the `postgres` user."""

    def __init__(self) -> None:
        bindir = _pg_bin()
        if bindir is None:
            pytest.skip("PostgreSQL server binaries (pg_ctl, initdb) are not installed")
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="rlad-drill-pg-"))
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(self.dir, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.dir / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bindir / tool), *args], check=True, capture_output=True, timeout=120)

    def _ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w", *args)

    def start(self) -> None:
        self._ctl("-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")

    def close(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRedis:
    """A redis-server without persistence (as the shared one runs): a restart forgets every queued message."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed")
        self.exe = exe
        self.port = free_port()
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        import redis

        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis(port=self.port).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)

    def restart(self, down_s: float) -> None:
        self.close()
        time.sleep(down_s)
        self.start()


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    try:
        yield pg
    finally:
        pg.close()


@pytest.fixture(scope="module")
def private_redis() -> Iterator[PrivateRedis]:
    r = PrivateRedis()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(scope="module")
def drill_stack(
    private_pg: PrivatePostgres, private_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalService]:
    """The production stack (API, a gpu worker, a cpu worker with beat) on the drill's own PostgreSQL and Redis."""
    svc = LocalService(
        tmp_path_factory.mktemp("drill"),
        port=free_port(),
        env={
            "RLAD_DATABASE_URL": private_pg.url,
            "RLAD_BROKER_URL": private_redis.url,
            "RLAD_REAPER_INTERVAL_S": "1",
            "RLAD_HEARTBEAT_INTERVAL_S": "0.5",
            "RLAD_HEARTBEAT_TIMEOUT_S": "30",
            "RLAD_METRICS_FLUSH_S": "0.5",
            "RLAD_DB_RETRY_MAX_S": "1",
            "RLAD_SHUTDOWN_GRACE_S": "30",
            # the backlog drill sends 200 requests as fast as the API answers: it is about the queue, not about
            # the per-key rate limit (tests/service/test_limits.py), which would answer 429 past its burst
            "RLAD_RATE_LIMIT_PER_S": "0",
            "RLAD_MODEL_ROOTS": json.dumps([str(tmp_path_factory.getbasetemp())]),
        },
    )
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def http(drill_stack: LocalService) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=drill_stack.base_url, headers={"Authorization": f"Bearer {drill_stack.api_key}"}, timeout=30
    ) as c:
        yield c


def wait_for(http: httpx.Client, job_id: str, until: Callable[[dict], bool], timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        r = http.get(f"/v1/jobs/{job_id}")
        if r.status_code == 200:
            job = r.json()
            if until(job):
                return job
            if job["is_terminal"] or time.monotonic() > deadline:
                events = http.get(f"/v1/jobs/{job_id}/events").json()["items"]
                raise AssertionError(f"job ended or timed out as {job['status']}: {job['error_message']}\n{events}")
        elif time.monotonic() > deadline:
            raise AssertionError(f"GET /v1/jobs/{job_id}: {r.status_code} {r.text}")
        time.sleep(0.2)


def event_kinds(http: httpx.Client, job_id: str) -> list[str]:
    return [e["kind"] for e in http.get(f"/v1/jobs/{job_id}/events").json()["items"]]


def processes_of(data_dir: Path) -> list[int]:
    """Processes started for a data directory (LocalService passes it in RLAD_DATA_DIR): trainers included."""
    mark = f"RLAD_DATA_DIR={data_dir}".encode()
    found = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and mark in (p / "environ").read_bytes().split(b"\0"):
                found.append(int(p.name))
        except OSError:
            continue
    return found
