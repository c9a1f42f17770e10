"""Deliver a job id to the workers' queue. Celery only delivers: the job row is the truth, and a duplicate
delivery is harmless (the worker's claim is a conditional UPDATE). The task is sent by name, so the API
needs no worker code."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery

from store.settings import Settings, get_settings

RUN_JOB = "rlad.run_job"


def broker_options(settings: Settings) -> dict[str, Any]:
    """Celery settings shared by the sender (API, reaper) and the worker."""
    opts: dict[str, Any] = {"broker_url": settings.resolved_broker_url, "broker_connection_retry_on_startup": True}
    if opts["broker_url"].startswith("filesystem://"):
        folder = str(settings.broker_folder)
        settings.broker_folder.mkdir(parents=True, exist_ok=True)  # the transport needs it to exist
        opts["broker_transport_options"] = {
            "data_folder_in": folder,
            "data_folder_out": folder,
            "control_folder": str(settings.broker_folder / "control"),
        }
        (settings.broker_folder / "control").mkdir(exist_ok=True)
    return opts


@lru_cache
def _sender() -> Celery:
    app = Celery("rlad-sender")
    app.conf.update(broker_options(get_settings()), task_ignore_result=True)
    return app


def dispatch_job(job_id: str, queue: str, copies: int = 1) -> None:
    """Send the job's id to `queue`, once per node it needs (a job on several nodes is claimed by as many
    workers: `store.gangs`)."""
    for _ in range(copies):
        _sender().send_task(RUN_JOB, args=[job_id], queue=queue)
