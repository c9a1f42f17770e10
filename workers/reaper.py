"""The reaper, run by beat on the cpu queue: stale heartbeats -> lost; lost -> queued (dispatched again,
resuming) or failed; undelivered jobs sent again, and every queued job when the broker lost its queues. The
rules are `store.jobs.reap`'s; this task sends the ids."""

from __future__ import annotations

import logging

from celery import shared_task

from store.db import session_scope
from store.dispatch import broker_forgot, broker_kept, dispatch_job
from store.gangs import job_resources
from store.jobs import reap as reap_jobs
from store.settings import get_settings

REAP = "rlad.reap"

log = logging.getLogger("rlad.worker")


@shared_task(name=REAP)
def reap() -> int:
    """Returns how many jobs were dispatched."""
    settings = get_settings()
    forgot = broker_forgot(settings)
    if forgot:
        log.warning("the broker lost its queues (a restart without persistence?): every queued job is sent again")
    with session_scope() as session:
        requeued = [
            (j.id, j.queue, job_resources(j.spec_resolved)[0])
            for j in reap_jobs(
                session,
                heartbeat_timeout_s=settings.heartbeat_timeout_s,
                redispatch_after_s=settings.redispatch_after_s,
                broker_forgot=forgot,
            )
        ]
    for job_id, queue, nodes in requeued:
        log.info("job %s: dispatched again (lost, or its message never reached a worker)", job_id)
        dispatch_job(job_id, queue, copies=nodes)
    if forgot:
        broker_kept(settings)  # only now: a pass that failed before this sends them all again
    return len(requeued)
