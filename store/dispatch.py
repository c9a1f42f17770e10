"""Deliver a job id to the workers' queue. Celery only delivers: the job row is the truth, and a duplicate
delivery is harmless (the worker's claim is a conditional UPDATE). The task is sent by name, so the API
needs no worker code."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery

from store.settings import Settings, get_settings

RUN_JOB = "rlad.run_job"
KEPT_MARK = "rlad:broker-kept"  # a key the reaper keeps in a Redis broker: gone means the queues were lost too


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


def _redis_broker(settings: Settings | None) -> str | None:
    url = (settings or get_settings()).resolved_broker_url
    return url if url.startswith(("redis://", "rediss://", "unix://")) else None


def broker_forgot(settings: Settings | None = None) -> bool:
    """True when the broker has lost what it held: a Redis broker restarted without persistence (or flushed)
    forgets its queued messages together with the mark `broker_kept` sets; the caller then sends every queued
    job again and calls `broker_kept` once they are sent (a pass that fails before that finds the mark still
    missing next time). Always False for a broker that keeps messages on disk (the embedded filesystem broker)
    and while the broker cannot be reached."""
    url = _redis_broker(settings)
    if url is None:
        return False
    import redis

    try:
        with redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5) as r:
            return not r.exists(KEPT_MARK)
    except redis.RedisError:
        return False


def broker_kept(settings: Settings | None = None) -> None:
    """Set the mark `broker_forgot` looks for."""
    url = _redis_broker(settings)
    if url is None:
        return
    import redis

    with redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5) as r:
        r.set(KEPT_MARK, "1")
