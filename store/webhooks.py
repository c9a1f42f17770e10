"""Webhooks: a job submitted with `webhook_url` is POSTed to that URL once it ends (succeeded, failed or
cancelled), signed with its team's secret, retried with backoff; every attempt is an event of the job.

    POST <webhook_url>
    Content-Type: application/json
    X-Rlad-Event: job.finished
    X-Rlad-Delivery: <job id>:<attempt>          (the same for every try of one attempt: deduplicate on it)
    X-Rlad-Signature: sha256=<hex HMAC-SHA256 of the raw body with the team's webhook secret>

    {"event": "job.finished", "job": {"id", "name", "method", "status", "steps_done", "total_steps", "attempt",
     "error_code", "error_message", "created_at", "finished_at"}}

Delivery is at least once: the beat task `rlad.webhooks` (workers/webhooks.py) takes the due deliveries, sends
them, and records each try here: a 2xx answer -> `webhook_delivered`; anything else (another status, a timeout,
a refused connection) -> `webhook_failed` and the next try after `webhook_backoff_s * 2**(tries - 1)` seconds,
until `webhook_max_attempts` tries (the last event says `final: true`). The secret is the team's, read and
rotated by its admin keys (GET /v1/webhook-secret, POST /v1/webhook-secret/rotate).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from store import states
from store.models import EventKind, Job, Team, utcnow

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
EVENT = "job.finished"
SIGNATURE_HEADER = "X-Rlad-Signature"
MAX_URL = 2000


def check_url(url: str) -> str | None:
    """Why `url` cannot be a webhook (with the fix), else None: http(s), a host, at most 2000 characters."""
    if len(url) > MAX_URL:
        return f"is {len(url)} characters long; fix: at most {MAX_URL}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host, e.g. https://ci.example.com/rlad-hook"
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        return "contains whitespace or control characters; fix: percent-encode them"
    return None


def secret_for(session: Session, *, team_id: str, rotate: bool = False) -> str:
    """The team's webhook secret, made on first use; `rotate` replaces it (deliveries sign with the new one)."""
    team = session.get(Team, team_id)
    if team is None:
        raise LookupError(team_id)
    if team.webhook_secret is None or rotate:
        team.webhook_secret = secrets.token_hex(32)
        session.flush()
    return team.webhook_secret


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    """What a receiver does: recompute the signature and compare in constant time."""
    return hmac.compare_digest(sign(secret, body), signature)


@dataclass(frozen=True)
class Delivery:
    job_id: str
    url: str
    body: bytes
    headers: dict[str, str]
    attempt: int  # which try of this delivery (1, 2, ...)


def payload(job: Job) -> dict[str, Any]:
    def when(t: datetime | None) -> str | None:
        return t.isoformat() if t else None

    return {
        "event": EVENT,
        "job": {
            "id": job.id,
            "name": job.name,
            "method": job.method,
            "status": job.status.value,
            "steps_done": job.last_step,
            "total_steps": job.total_steps,
            "attempt": job.attempt,
            "error_code": job.error_code,
            "error_message": job.error_message,
            "created_at": when(job.created_at),
            "finished_at": when(job.finished_at),
        },
    }


def due(session: Session, *, now: datetime | None = None, limit: int = 50) -> list[Delivery]:
    """The deliveries to try now: ended jobs whose webhook is pending and whose next try is due. Each job's
    next try is pushed a minute out as it is taken, so a second task running meanwhile does not take it too
    (`record` sets the real one)."""
    now = now or utcnow()
    jobs = session.scalars(
        select(Job)
        .where(
            Job.webhook_status == PENDING,
            Job.status.in_(states.TERMINAL),
            (Job.webhook_next_at.is_(None)) | (Job.webhook_next_at <= now),
        )
        .order_by(Job.finished_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    out = []
    for job in jobs:
        if job.webhook_url is None:
            continue
        body = json.dumps(payload(job), separators=(",", ":")).encode()
        secret = secret_for(session, team_id=job.team_id)
        headers = {
            "Content-Type": "application/json",
            "X-Rlad-Event": EVENT,
            "X-Rlad-Delivery": f"{job.id}:{job.attempt}",
            SIGNATURE_HEADER: sign(secret, body),
        }
        out.append(Delivery(job.id, job.webhook_url, body, headers, job.webhook_attempts + 1))
        job.webhook_next_at = now + timedelta(minutes=1)
    return out


def record(
    session: Session,
    *,
    job_id: str,
    status_code: int | None,
    error: str | None,
    max_attempts: int,
    backoff_s: float,
    now: datetime | None = None,
) -> Job | None:
    """Record one try of the job's webhook: delivered on a 2xx `status_code`, else failed and retried later
    (or given up after `max_attempts` tries). Adds the event."""
    now = now or utcnow()
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None or job.webhook_status != PENDING:
        return None
    job.webhook_attempts += 1
    ok = status_code is not None and 200 <= status_code < 300
    data: dict[str, Any] = {"url": job.webhook_url, "try": job.webhook_attempts, "http_status": status_code}
    if ok:
        job.webhook_status, job.webhook_next_at = DELIVERED, None
        states.add_event(session, job, EventKind.webhook_delivered, **data)
        return job
    final = job.webhook_attempts >= max_attempts
    if final:
        job.webhook_status, job.webhook_next_at = FAILED, None
    else:
        job.webhook_next_at = now + timedelta(seconds=backoff_s * 2 ** (job.webhook_attempts - 1))
    states.add_event(session, job, EventKind.webhook_failed, error=error, final=final, **data)
    return job
