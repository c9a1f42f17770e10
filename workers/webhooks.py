"""The webhook sender, run by beat on the cpu queue: POST each due delivery (`store.webhooks.due`) and record
how it went (`store.webhooks.record`). The rules (what is due, signing, retries) are store.webhooks'."""

from __future__ import annotations

import logging

import httpx
from celery import shared_task

from store import webhooks
from store.db import session_scope
from store.settings import get_settings

WEBHOOKS = "rlad.webhooks"

log = logging.getLogger("rlad.worker")


@shared_task(name=WEBHOOKS)
def send_webhooks() -> int:
    """Returns how many deliveries were tried."""
    settings = get_settings()
    with session_scope() as session:
        deliveries = webhooks.due(session)
    if not deliveries:
        return 0
    with httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False) as http:
        for d in deliveries:
            status, error = None, None
            try:
                status = http.post(d.url, content=d.body, headers=d.headers).status_code
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
            with session_scope() as session:
                webhooks.record(
                    session,
                    job_id=d.job_id,
                    status_code=status,
                    error=error,
                    max_attempts=settings.webhook_max_attempts,
                    backoff_s=settings.webhook_backoff_s,
                )
            log.info("job %s: webhook try %d to %s: %s", d.job_id, d.attempt, d.url, error or f"HTTP {status}")
    return len(deliveries)
