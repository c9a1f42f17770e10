"""Start the service's processes on this machine: the API (uvicorn) and the workers (Celery).

`rlad up` and `rlad demo` use it with the embedded deployment (SQLite, kombu's filesystem broker and a
result-store directory, all under one data directory); the integration tests use it with PostgreSQL and
Redis too. The commands are the ones docker-compose.yml runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

KEY_FILE = "api_key"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Seconds an idle keep-alive connection stays open on the API: longer than clients and proxies keep an idle
# connection (httpx 5 s, nginx and cloud load balancers 60 s), so that the client side always drops it first.
# At uvicorn's default of 5 s, equal to httpx's, a client can reuse a connection just as the server's timer
# closes it, and that request is lost (a reset, httpx ReadError).
KEEPALIVE_S = 75


def api_command(host: str, port: int, workers: int = 1) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "api.app:create_app",
        "--factory",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--timeout-keep-alive",
        str(KEEPALIVE_S),
        "--no-access-log",
    ]


def worker_command(queues: str, *, beat_schedule: Path | None = None, hostname: str | None = None) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        "-Q",
        queues,
        "-c",
        "1",
        "--loglevel",
        "INFO",
    ]
    if hostname:
        cmd += ["-n", hostname]
    if beat_schedule is not None:  # the reaper's schedule runs inside this worker (one per deployment)
        cmd += ["-B", "-s", str(beat_schedule)]
    return cmd


def admin_command(*args: str) -> list[str]:
    """The store's administration (`store.admin`: migrate, create-key), run in the service's environment."""
    return [sys.executable, "-m", "store.admin", *args]


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _unblock_stop_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


class LocalService:
    """The API and two workers (queue `gpu`: jobs, one at a time; queue `cpu`: the reaper, with beat)."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 8321,
        env: Mapping[str, str] | None = None,
        log_to_files: bool = True,
    ):
        self.data_dir = Path(data_dir).resolve()
        self.host, self.port = host, port
        self.env = {**os.environ, "RLAD_DATA_DIR": str(self.data_dir), **(env or {})}
        # jobs may read models by path only under the model roots: here, the directory `rlad up` runs in
        # (the CLI sends absolute paths of the project's models); the result store in it stays closed
        self.env.setdefault("RLAD_MODEL_ROOTS", json.dumps([str(Path.cwd())]))
        self.log_to_files = log_to_files
        self.procs: dict[str, subprocess.Popen] = {}
        self.commands: dict[str, list[str]] = {}
        self.api_key = ""

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def prepare(self) -> str:
        """Create the data directory, migrate the database, and make sure a local team has a key."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(admin_command("migrate"), env=self.env, check=True)
        key_file = self.data_dir / KEY_FILE
        if not key_file.exists():
            key = subprocess.run(
                admin_command("create-key", "--team", "local"), env=self.env, check=True, capture_output=True, text=True
            ).stdout.strip()
            key_file.write_text(key + "\n")
            key_file.chmod(0o600)
        self.api_key = key_file.read_text().strip()
        return self.api_key

    def _spawn(self, name: str, cmd: list[str]) -> None:
        out = None
        if self.log_to_files:
            (self.data_dir / "logs").mkdir(exist_ok=True)
            out = open(self.data_dir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 (lives as long as the process)
        # a stop signal between the fork and this bookkeeping would leave a process nobody stops: hold such
        # signals until the child is recorded (the child itself starts with them unblocked)
        self.commands[name] = cmd
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            self.procs[name] = subprocess.Popen(
                cmd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
                start_new_session=True,
                preexec_fn=_unblock_stop_signals,
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def start(self, *, api: bool = True, workers: bool = True, timeout_s: float = 60.0) -> None:
        self.prepare()
        if workers:
            self._spawn("worker-gpu", worker_command("gpu", hostname="gpu@%h"))
            self._spawn(
                "worker-cpu", worker_command("cpu", hostname="cpu@%h", beat_schedule=self.data_dir / "beat-schedule")
            )
        if api:
            self._spawn("api", api_command(self.host, self.port))
            self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with code {p.returncode} while starting; see "
                        f"{self.data_dir / 'logs' / (name + '.log')}"
                    )
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the API at {self.base_url} was not ready within {timeout_s:.0f} s")
            time.sleep(0.2)

    def restart_exited(self) -> list[tuple[str, int]]:
        """Start again each process that has exited (a crashed worker must not leave jobs waiting, nor stop the
        API); returns the (name, exit code) of each one restarted."""
        restarted = []
        for name, p in list(self.procs.items()):
            if p.poll() is not None:
                restarted.append((name, p.returncode))
                self._spawn(name, self.commands[name])
        return restarted

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop everything with SIGTERM. A worker shuts down warm: a running job checkpoints and is released to
        the queue, to resume from that checkpoint when a worker runs again. Whatever is still running after
        `timeout_s` (default: the shutdown grace RLAD_SHUTDOWN_GRACE_S plus 30 s) is killed."""
        if timeout_s is None:
            timeout_s = float(self.env.get("RLAD_SHUTDOWN_GRACE_S", 120)) + 30
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()

    def __enter__(self) -> LocalService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
