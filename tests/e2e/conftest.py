"""The dashboard in a real browser: Debian's chromium driven by Playwright (never a downloaded browser),
against the embedded service (uvicorn, a Celery worker, SQLite, the filesystem broker) running real tiny jobs."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rlad.service import LocalService, admin_command
from rlad_core.models import save_tiny_model
from tests.service.conftest import free_port

CHROMIUM = os.environ.get("RLAD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = (
    Path(os.environ.get("RLAD_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts")) / "dashboard"
)


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("e2e-models")
    return {
        "student": save_tiny_model(root / "student", "micro", seed=0),
        "teacher": save_tiny_model(root / "teacher", "micro", seed=1),
    }


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    svc = LocalService(
        tmp_path_factory.mktemp("e2e-service"),
        port=free_port(),
        env={
            "RLAD_METRICS_FLUSH_S": "0.3",
            "RLAD_HEARTBEAT_INTERVAL_S": "0.5",
            "RLAD_CANCEL_GRACE_S": "10",
            "RLAD_JOB_CACHE_TTL_S": "0.2",
            "RLAD_MODEL_ROOTS": json.dumps([str(tmp_path_factory.getbasetemp())]),
        },
    )
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def other_team_key(service: LocalService) -> str:
    return subprocess.run(
        admin_command("create-key", "--team", "vision"), env=service.env, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def http(service: LocalService) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=service.base_url, headers={"Authorization": f"Bearer {service.api_key}"}, timeout=30
    ) as c:
        yield c


def job_spec(models: dict[str, Path], **overrides: object) -> dict:
    spec = {
        "method": "rlad",
        "student": str(models["student"]),
        "teacher": str(models["teacher"]),
        "steps": 12,
        "batch_size": 8,
        "group_size": 4,
        "max_new_tokens": 8,
        "eval_every": 4,
        "eval_size": 16,
        "checkpoint_every": 6,
        "lr": 1e-3,
        "task": {"name": "arithmetic", "levels": [1, 2]},
        "log_samples": 2,
    }
    spec.update(overrides)
    return spec


def wait_status(http: httpx.Client, job_id: str, statuses: set[str], timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        if job["is_terminal"] or time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} is {job['status']} ({job['error_message']}), wanted {statuses}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def finished_jobs(http: httpx.Client, models: dict[str, Path]) -> dict[str, dict]:
    """Two short jobs run to the end: an rlad and a grpo run of the same student."""
    rlad = http.post("/v1/jobs", json=job_spec(models, name="rlad-a05")).json()
    grpo = http.post("/v1/jobs", json=job_spec(models, name="grpo-base", method="grpo")).json()
    return {"rlad": wait_status(http, rlad["id"], {"succeeded"}), "grpo": wait_status(http, grpo["id"], {"succeeded"})}


@pytest.fixture(scope="module")  # not longer: Playwright's sync API keeps an event loop running in this thread
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium), as .ci/run does")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, request: pytest.FixtureRequest) -> Iterator[object]:
    """A fresh browser context (no cookies) at 1280 px; page errors fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def sign_in(page, service: LocalService, key: str, path: str = "/ui/jobs") -> None:
    page.goto(service.base_url + path)
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**{path}")


def screenshots(page, name: str) -> None:
    """Save the page at 1280 px and at 390 px (a phone) as test artifacts."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(300)  # charts follow their container's size
        page.screenshot(path=str(ARTIFACTS / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})
