"""The Celery app. Workers: `celery -A workers.celery_app worker -Q gpu -c 1` (one per GPU), beat for the reaper.

Celery only delivers job ids; the job row in the database is the truth. Early ack: a message is acknowledged
when the task starts, so a worker that dies does not get the job redelivered by the broker. The reaper
notices the stale heartbeat instead and re-queues the job with resume.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import Celery, signals

from store import workers as worker_store
from store.db import after_fork, session_scope
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

log = logging.getLogger("rlad.worker")


# ----- the workers registry: each node reports itself while it runs (the dashboard's queue page) ------------
_node: dict[str, Any] = {}


@signals.celeryd_after_setup.connect
def _remember_node(sender: str, instance: Any, **_: Any) -> None:
    _node.update(name=sender, queues=sorted(instance.app.amqp.queues.consume_from), pid=os.getpid(),
                 stop=threading.Event())


@signals.worker_ready.connect
def _start_heartbeat(**_: Any) -> None:
    if "name" in _node:
        threading.Thread(target=_beat, name="rlad-worker-heartbeat", daemon=True).start()


def _beat() -> None:
    while True:
        try:
            with session_scope() as s:
                worker_store.worker_heartbeat(s, name=_node["name"], queues=_node["queues"], pid=_node["pid"])
        except Exception:  # the database is away for a moment: try again next beat
            log.warning("worker heartbeat failed", exc_info=True)
        if _node["stop"].wait(settings.heartbeat_interval_s):
            return


@signals.worker_shutdown.connect
def _node_gone(**_: Any) -> None:
    if "name" in _node and os.getpid() == _node["pid"]:
        _node["stop"].set()
        try:
            with session_scope() as s:
                worker_store.worker_gone(s, name=_node["name"], pid=_node["pid"])
        except Exception:
            log.warning("could not remove worker %s from the registry", _node["name"], exc_info=True)


@signals.worker_process_init.connect
def _child_started(**_: Any) -> None:
    after_fork()  # the pool child must not share the main process's database connections
