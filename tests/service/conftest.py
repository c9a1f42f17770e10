"""Fixtures for the service: real databases (a fresh PostgreSQL database per test, a SQLite file), real
Redis, the API in-process (TestClient) or as a uvicorn server, Celery workers as real processes.

PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) must be running (`.ci/run` starts them);
`RLAD_TEST_PG` / `RLAD_TEST_REDIS` point elsewhere.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from sqlalchemy import create_engine, text

from rlad.service import api_command
from rlad_core.models import save_tiny_model

if TYPE_CHECKING:
    from rlad.service import LocalService

PG_ADMIN = os.environ.get("RLAD_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("RLAD_TEST_REDIS", "redis://127.0.0.1:6379/15")
SETTINGS_ENV = ("RLAD_DATA_DIR", "RLAD_DATABASE_URL", "RLAD_BROKER_URL", "RLAD_RESULT_ROOT", "RLAD_MODEL_ROOTS")


@contextmanager
def production_stack(
    tmp_path_factory: pytest.TempPathFactory, name: str, env: dict[str, str]
) -> Iterator[LocalService]:
    """`LocalService` (API, gpu worker, cpu worker with beat) on a fresh PostgreSQL database and the test Redis
    database, with `env` and model roots under pytest's temporary directory; dropped and flushed afterwards."""
    from rlad.service import LocalService

    db = f"rlad_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{db}"'))
    import redis

    redis.Redis.from_url(REDIS).flushdb()
    svc = LocalService(
        tmp_path_factory.mktemp(name),
        port=free_port(),
        env={
            "RLAD_DATABASE_URL": PG_ADMIN.rsplit("/", 1)[0] + f"/{db}",
            "RLAD_BROKER_URL": REDIS,
            **env,
            **model_roots_env(tmp_path_factory),
        },
    )
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()
        redis.Redis.from_url(REDIS).flushdb()


def reset_caches() -> None:
    """Forget cached settings, engine, sessions and the broker sender (the environment changed)."""
    from store import dispatch
    from store.db import reset_caches as reset_db

    reset_db()
    dispatch._sender.cache_clear()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped afterwards."""
    name = f"rlad_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    reset_caches()  # close pooled connections before the drop
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'rlad.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that uses it runs on SQLite and on PostgreSQL."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def service_env(
    db_url: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """Settings for an in-process API on `db_url`: data dir under tmp_path (filesystem broker, result store),
    the database migrated to head. Jobs may read models under pytest's temporary tree (`model_roots_env`);
    the result store inside it stays closed."""
    from store.migrate import upgrade

    env = {"RLAD_DATA_DIR": str(tmp_path / "data"), "RLAD_DATABASE_URL": db_url, **model_roots_env(tmp_path_factory)}
    for k in SETTINGS_ENV:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    reset_caches()
    upgrade(db_url)
    yield env
    reset_caches()


@pytest.fixture
def keys(service_env: dict[str, str]) -> dict[str, str]:
    """API keys of two teams, "red" and "blue"."""
    from store.db import session_scope
    from store.teams import create_api_key

    with session_scope() as s:
        return {team: create_api_key(s, team_name=team) for team in ("red", "blue")}


@pytest.fixture
def client(service_env: dict[str, str]):
    from fastapi.testclient import TestClient

    from api.app import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


@contextmanager
def uvicorn_server(env: dict[str, str], workers: int = 1) -> Iterator[int]:
    """The API as `rlad up` and the compose file run it (`rlad.service.api_command`: uvicorn, `workers` API
    processes) in its own process with `env` over ours; yields its port."""
    port = free_port()
    proc = subprocess.Popen(
        [*api_command("127.0.0.1", port, workers), "--log-level", "warning"],
        env={**os.environ, **env},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def model_roots_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """RLAD_MODEL_ROOTS for a service whose tests use tiny models under pytest's base temporary directory."""
    return {"RLAD_MODEL_ROOTS": json.dumps([str(tmp_path_factory.getbasetemp())])}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def micro_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The smallest tiny student and teacher (same character-level tokenizer)."""
    root = tmp_path_factory.mktemp("micro")
    return {
        "student": save_tiny_model(root / "student", "micro", seed=0),
        "teacher": save_tiny_model(root / "teacher", "micro", seed=1),
    }


def tiny_spec(models: dict[str, Path], **overrides: object) -> dict:
    spec = {
        "method": "rlad",
        "student": str(models["student"]),
        "teacher": str(models["teacher"]),
        "steps": 4,
        "batch_size": 8,
        "group_size": 4,
        "max_new_tokens": 8,
        "eval_every": 2,
        "eval_size": 8,
        "checkpoint_every": 2,
        "lr": 1e-3,
        "task": {"name": "arithmetic", "levels": [1]},
        "log_samples": 0,
    }
    spec.update(overrides)
    return spec
