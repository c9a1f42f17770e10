"""`rlad up` and `rlad demo`: the embedded service as a user starts it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from typer.testing import CliRunner

from rlad.cli import app
from rlad.service import free_port
from tests.drills.conftest import processes_of

pytestmark = pytest.mark.slow


def test_rlad_up_serves_until_sigterm_then_stops_everything(tmp_path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlad.cli", "up", "--data-dir", str(tmp_path / "d"), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        first = proc.stdout.readline()  # printed once everything is up
        assert f"RLAD service on http://127.0.0.1:{port}" in first, first + proc.stdout.read()
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
        key = (tmp_path / "d" / "api_key").read_text().strip()
        r = httpx.get(f"http://127.0.0.1:{port}/v1/jobs", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200 and r.json()["items"] == []
    finally:
        os.killpg(proc.pid, signal.SIGTERM) if proc.poll() is None else None
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "dashboard" in first + out and "stopping" in out
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)


def test_sigterm_while_starting_stops_everything_it_started(tmp_path) -> None:
    data = tmp_path / "d"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlad.cli", "up", "--data-dir", str(data), "--port", str(free_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    # wait until `rlad up` has spawned its first process (the API is not ready yet)
    while not [p for p in processes_of(data.resolve()) if p != proc.pid]:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopping" in out, out
    assert processes_of(data.resolve()) == []


def test_demo_runs_an_rlad_job_through_the_service_and_loads_the_checkpoint(tmp_path, monkeypatch) -> None:
    import rlad.demo

    # the same pipeline at a smaller size: micro models, a few warm-up steps
    monkeypatch.setattr(rlad.demo, "WARMUP", {"teacher": ("micro", 1, 8), "student": ("micro", 0, 6)})
    result = CliRunner().invoke(app, ["demo", "--workdir", str(tmp_path), "--steps", "4", "--quiet"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "submitted job job_" in out and "downloaded and sha256-verified" in out
    assert "answers 37+45= with:" in out
    (ckpt,) = (tmp_path / "download").iterdir()
    assert ckpt.name.endswith("-step-4") and (ckpt / "model.safetensors").is_file()
    assert not (tmp_path / "service" / "logs" / "api.log").read_text().count("Traceback")
