"""Liveness, readiness (database and broker reachable) and Prometheus metrics."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select, text
from starlette.concurrency import run_in_threadpool

from api.schemas import Health
from store.db import session_scope
from store.dispatch import broker_options
from store.models import Job
from store.settings import get_settings

log = logging.getLogger("rlad.api")
router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


def _check_broker() -> None:
    from kombu import Connection  # type: ignore[attr-defined]  # kombu's re-export, untyped

    opts = broker_options(get_settings())
    with Connection(  # type: ignore[no-untyped-call]
        opts["broker_url"], transport_options=opts.get("broker_transport_options", {}), connect_timeout=2
    ) as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


@router.get("/readyz", response_model=Health, responses={503: {"model": Health, "description": "a dependency is down"}})
async def readyz() -> Response:
    """Ready to serve: the database answers and the broker accepts connections. Each check says `ok` or
    `unavailable`; the reason is in the server log."""
    checks: dict[str, str] = {}

    def db() -> None:
        with session_scope() as s:
            s.execute(text("SELECT 1"))

    for name, fn in (("database", db), ("broker", _check_broker)):
        try:
            await run_in_threadpool(fn)
            checks[name] = "ok"
        except Exception:  # readiness reports, it does not raise; the details (host, port, SQL) only to the log
            log.warning("readiness: %s unavailable", name, exc_info=True)
            checks[name] = "unavailable"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse(
        Health(status="ok" if ok else "unavailable", checks=checks).model_dump(), status_code=200 if ok else 503
    )


class _JobCollector:
    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("rlad_jobs", "jobs by status and queue", labels=["status", "queue"])
        with session_scope() as s:
            for status, queue, n in s.execute(
                select(Job.status, Job.queue, func.count()).group_by(Job.status, Job.queue)
            ):
                g.add_metric([status.value, queue], n)
        yield g


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}},
)
def prometheus() -> Response:
    """Jobs by status and queue, for Prometheus."""
    registry = CollectorRegistry()
    registry.register(_JobCollector())
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
