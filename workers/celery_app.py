"""The Celery app. Workers: `celery -A workers.celery_app worker -Q gpu -c 1` (one per GPU), beat for the reaper.

Celery only delivers job ids; the job row in the database is the truth. Early ack: a message is acknowledged
when the task starts, so a worker that dies does not get the job redelivered by the broker. The reaper
notices the stale heartbeat instead and re-queues the job with resume.
"""

from __future__ import annotations

import logging

from celery import Celery

from store.dispatch import broker_options
from store.settings import get_settings

REAP = "rlad.reap"

settings = get_settings()
app = Celery("rlad", include=["workers.tasks"])
app.conf.update(
    broker_options(settings),
    task_acks_late=False,  # early ack (above)
    worker_prefetch_multiplier=1,
    worker_disable_prefetch=True,  # a busy worker takes no second job that another worker could run
    worker_max_tasks_per_child=1,  # a fresh child per job: nothing (CUDA, memory) leaks into the next
    worker_concurrency=1,  # one job per GPU; run one worker per GPU
    task_ignore_result=True,
    task_default_queue="cpu",
    task_routes={REAP: {"queue": "cpu"}},
    task_create_missing_queues=True,
    worker_hijack_root_logger=False,
    beat_schedule={"reap": {"task": REAP, "schedule": settings.reaper_interval_s}},
    broker_connection_retry_on_startup=True,
)
logging.getLogger("rlad").setLevel(logging.INFO)
