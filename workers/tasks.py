"""Celery tasks: thin wrappers that take a job id and delegate."""

from __future__ import annotations

import logging
from typing import Any

from store.db import session_scope
from store.dispatch import RUN_JOB, dispatch_job
from store.jobs import reap as reap_jobs
from store.settings import get_settings
from workers.celery_app import REAP, app
from workers.supervisor import supervise

log = logging.getLogger("rlad.worker")


@app.task(name=RUN_JOB, bind=True)
def run_job(self: Any, job_id: str) -> None:
    supervise(job_id, worker=self.request.hostname)


@app.task(name=REAP)
def reap() -> int:
    """Stale heartbeats -> lost; lost -> queued (dispatched again, resuming) or failed; undelivered jobs sent
    again. Returns how many were dispatched."""
    with session_scope() as session:
        settings = get_settings()
        requeued = [
            (j.id, j.queue)
            for j in reap_jobs(
                session,
                heartbeat_timeout_s=settings.heartbeat_timeout_s,
                redispatch_after_s=settings.redispatch_after_s,
            )
        ]
    for job_id, queue in requeued:
        log.info("job %s: dispatched again (lost, or its message never reached a worker)", job_id)
        dispatch_job(job_id, queue)
    return len(requeued)
