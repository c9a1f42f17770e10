"""docker-compose.yml cannot run here (no Docker engine): its commands must be the ones the tests run."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from rlad.service import api_command, worker_command

COMPOSE = yaml.safe_load((Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text())["services"]


def _as_run_here(cmd: list[str]) -> list[str]:
    return [sys.executable if c == "python" else c for c in cmd]


def test_the_api_service_runs_the_tested_command() -> None:
    assert _as_run_here(COMPOSE["api"]["command"]) == api_command("0.0.0.0", 8321, workers=2)


def test_the_workers_run_the_tested_commands() -> None:
    assert _as_run_here(COMPOSE["worker-gpu"]["command"]) == worker_command("gpu", hostname="gpu@%h")
    assert _as_run_here(COMPOSE["worker-cpu"]["command"]) == worker_command("cpu", hostname="cpu@%h")
    # profile two-nodes: a second node serving the same queue under a name of its own
    assert _as_run_here(COMPOSE["worker-gpu-node1"]["command"]) == worker_command("gpu", hostname="gpu-node1@%h")
    assert COMPOSE["worker-gpu-node1"]["profiles"] == ["two-nodes"]


def test_every_service_of_the_design_is_there_with_its_dependencies() -> None:
    assert {"postgres", "redis", "migrate", "api", "worker-gpu", "worker-cpu", "beat"} <= set(COMPOSE)
    assert COMPOSE["migrate"]["command"] == ["alembic", "upgrade", "head"]
    assert "healthcheck" in COMPOSE["postgres"] and "healthcheck" in COMPOSE["redis"]
    gpu = COMPOSE["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and gpu["count"] == "${RLAD_WORKER_GPUS:-1}"  # the node's device count
    assert COMPOSE["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_workers_stop_warm_with_a_grace_longer_than_the_shutdown_grace() -> None:
    """SIGTERM: the job checkpoints and is released (SIGQUIT would cut it off); compose must wait for that."""
    from store.settings import Settings

    grace = Settings().shutdown_grace_s
    for name in ("worker-gpu", "worker-gpu-node1", "worker-cpu"):
        assert COMPOSE[name]["stop_signal"] == "SIGTERM"
        assert float(COMPOSE[name]["stop_grace_period"].removesuffix("s")) >= grace + 10
