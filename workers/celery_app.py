"""The Celery app. Workers: `celery -A workers.celery_app worker -Q gpu -c 1` (one per GPU), beat for the reaper
and the webhook sender.

Celery only delivers job ids; the job row in the database is the truth. Early ack: a message is acknowledged
when the task starts, so a worker that dies does not get the job redelivered by the broker. The reaper
notices the stale heartbeat instead and re-queues the job with resume.

One pool child serves every message: the trainer runs in a process of its own (`workers.supervisor`), so the
child never holds CUDA or a model, and a message for a job that is no longer queued (cancelled, claimed)
costs one query instead of a fresh child. Stopping the worker (SIGTERM, a warm shutdown) tells the child's
supervisor, which checkpoints the job and releases it to the queue.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from typing import Any

from celery import Celery, signals

from store import jobs as job_store
from store import workers as worker_store
from store.db import after_fork, session_scope
from store.dispatch import broker_options
from store.settings import get_settings
from workers.reaper import REAP
from workers.supervisor import mark_worker_stopping  # its shared flag is made here, before the pool forks
from workers.webhooks import WEBHOOKS

settings = get_settings()
app = Celery("rlad")  # the tasks: run_job (workers.supervisor), reap (workers.reaper), webhooks, imported above
app.conf.update(
    broker_options(settings),
    task_acks_late=False,  # early ack (above)
    worker_prefetch_multiplier=1,
    worker_disable_prefetch=True,  # a busy worker takes no second job that another worker could run
    worker_concurrency=1,  # one job per GPU; run one worker per GPU
    task_ignore_result=True,
    task_default_queue="cpu",
    task_routes={REAP: {"queue": "cpu"}, WEBHOOKS: {"queue": "cpu"}},
    task_create_missing_queues=True,
    worker_hijack_root_logger=False,
    beat_schedule={
        "reap": {"task": REAP, "schedule": settings.reaper_interval_s},
        "webhooks": {"task": WEBHOOKS, "schedule": settings.webhook_poll_s},
    },
    broker_connection_retry_on_startup=True,
)
logging.getLogger("rlad").setLevel(logging.INFO)

log = logging.getLogger("rlad.worker")


# ----- the workers registry: each node reports itself while it runs (the dashboard's queue page) ------------
_node: dict[str, Any] = {}


@signals.celeryd_after_setup.connect
def _remember_node(sender: str, instance: Any, **_: Any) -> None:
    _node.update(
        name=sender,
        queues=sorted(instance.app.amqp.queues.consume_from),
        pid=os.getpid(),
        stop=threading.Event(),
        devices=0,
    )


@signals.worker_ready.connect
def _start_heartbeat(**_: Any) -> None:
    if "name" in _node:
        _forget_previous_life(_node["name"])
        threading.Thread(target=_beat, name="rlad-worker-heartbeat", daemon=True).start()


def _forget_previous_life(name: str) -> None:
    """Jobs the database says this node runs were its previous process's (`store.jobs.worker_restarted`): lost
    now, and the reaper asked to queue them again."""
    try:
        with session_scope() as s:
            lost = job_store.worker_restarted(s, worker=name)
    except Exception:  # the database is away: the reaper finds them by their stale heartbeats instead
        log.warning("could not check for jobs of %s's previous run", name, exc_info=True)
        return
    for job_id in lost:
        log.warning("job %s: held by this worker's previous run, which ended without releasing it", job_id)
    if lost:
        app.send_task(REAP)  # queued again now, not at the reaper's next scheduled pass


def cuda_devices() -> int:
    """CUDA devices this node's jobs can use, asked of a separate interpreter: CUDA is never initialised in the
    Celery process (its children are forked)."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        return int(out.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        log.warning("could not count this node's CUDA devices; advertising none", exc_info=True)
        return 0


def _beat() -> None:
    _node["devices"] = cuda_devices()
    while True:
        try:
            with session_scope() as s:
                worker_store.worker_heartbeat(
                    s, name=_node["name"], queues=_node["queues"], pid=_node["pid"], devices=_node["devices"]
                )
        except Exception:  # the database is away for a moment: try again next beat
            log.warning("worker heartbeat failed", exc_info=True)
        if _node["stop"].wait(settings.heartbeat_interval_s):
            return


@signals.worker_shutting_down.connect
def _stop_jobs(**_: object) -> None:
    """The worker is stopping: the pool child's supervisor sees it within RLAD_CANCEL_POLL_S, asks its trainer
    for a checkpoint and releases the job to the queue; a warm shutdown waits for that (compose's
    stop_grace_period must cover RLAD_SHUTDOWN_GRACE_S). A message the last poll still takes is sent back."""
    mark_worker_stopping()


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
