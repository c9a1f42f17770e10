"""Dashboard sign-ins (`ui_sessions`): the cookie holds a random token, the table only its sha256, so a stolen
database row cannot be replayed and signing out (deleting the row) ends the session on the server at once."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from store.models import ApiKey, KeyRole, Team, UiSession, utcnow
from store.teams import KeyOwner, is_live


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_session(session: Session, *, team_id: str, ttl_s: float, key_id: str | None = None) -> str:
    """Start a sign-in for `team_id` lasting `ttl_s`, made with the key `key_id` (whose role it has, and which
    ends it when revoked or expired); returns the token in clear (for the cookie only)."""
    now = utcnow()
    session.execute(delete(UiSession).where(UiSession.expires_at < now))  # expired sign-ins are never read again
    token = secrets.token_urlsafe(32)
    session.add(
        UiSession(
            token_hash=hash_token(token),
            team_id=team_id,
            key_id=key_id,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_s),
        )
    )
    session.flush()
    return token


def owner_of_session(session: Session, *, token: str) -> KeyOwner | None:
    """The team and role of an unexpired sign-in whose key is still live, else None. A sign-in from before
    keys had roles (no key) has the write role."""
    now = utcnow()
    row = session.execute(
        select(UiSession, Team.name)
        .join(Team, Team.id == UiSession.team_id)
        .where(UiSession.token_hash == hash_token(token), UiSession.expires_at > now)
    ).one_or_none()
    if row is None:
        return None
    ui, team_name = row
    if ui.key_id is None:
        return KeyOwner(ui.team_id, team_name, "", KeyRole.write)
    key = session.get(ApiKey, ui.key_id)
    if key is None or not is_live(key, now):
        return None
    return KeyOwner(ui.team_id, team_name, key.id, KeyRole(key.role))


def team_for_session(session: Session, *, token: str) -> Team | None:
    """The team of an unexpired sign-in, else None."""
    owner = owner_of_session(session, token=token)
    return session.get(Team, owner.team_id) if owner else None


def delete_session(session: Session, *, token: str) -> None:
    """Sign out: the token stops working at once, in every API process."""
    session.execute(delete(UiSession).where(UiSession.token_hash == hash_token(token)))
