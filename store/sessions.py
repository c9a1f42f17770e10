"""Dashboard sign-ins (`ui_sessions`): the cookie holds a random token, the table only its sha256, so a stolen
database row cannot be replayed and signing out (deleting the row) ends the session on the server at once."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from store.models import Team, UiSession, utcnow


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_session(session: Session, *, team_id: str, ttl_s: float) -> str:
    """Start a sign-in for `team_id` lasting `ttl_s`; returns the token in clear (for the cookie only)."""
    now = utcnow()
    session.execute(delete(UiSession).where(UiSession.expires_at < now))  # expired sign-ins are never read again
    token = secrets.token_urlsafe(32)
    session.add(
        UiSession(
            token_hash=hash_token(token), team_id=team_id, created_at=now, expires_at=now + timedelta(seconds=ttl_s)
        )
    )
    session.flush()
    return token


def team_for_session(session: Session, *, token: str) -> Team | None:
    """The team of an unexpired sign-in, else None."""
    return session.scalar(
        select(Team)
        .join(UiSession, UiSession.team_id == Team.id)
        .where(UiSession.token_hash == hash_token(token), UiSession.expires_at > utcnow())
    )


def delete_session(session: Session, *, token: str) -> None:
    """Sign out: the token stops working at once, in every API process."""
    session.execute(delete(UiSession).where(UiSession.token_hash == hash_token(token)))
