"""The audit log: job submissions, cancellations and key changes of a team, with the key that made them (None:
the operator, `rlad keys create`), the client's address and when. Written in the same transaction as the
change itself, so the log never misses a change that happened nor holds one that did not."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import AuditEvent

ACTIONS = ("job.submit", "job.cancel", "job.pause", "job.resume", "key.create", "key.revoke", "key.rotate")


def record(
    session: Session,
    *,
    team_id: str,
    key_id: str | None,
    action: str,
    target: str,
    address: str | None = None,
    data: dict[str, Any] | None = None,
) -> AuditEvent:
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}; one of {', '.join(ACTIONS)}")
    event = AuditEvent(
        team_id=team_id, key_id=key_id, action=action, target=target, address=address, data=dict(data or {})
    )
    session.add(event)
    session.flush()
    return event


def list_events(session: Session, *, team_id: str, after: int = 0, limit: int = 100) -> list[AuditEvent]:
    """The team's events after id `after`, oldest first."""
    return list(
        session.scalars(
            select(AuditEvent)
            .where(AuditEvent.team_id == team_id, AuditEvent.id > after)
            .order_by(AuditEvent.id)
            .limit(limit)
        )
    )
