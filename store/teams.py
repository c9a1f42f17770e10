"""Teams and API keys. A key is shown once, at creation; only its sha256 is stored."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import ApiKey, Team

KEY_PREFIX = "rlad_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_team(session: Session, *, name: str) -> Team:
    team = session.scalar(select(Team).where(Team.name == name))
    if team is None:
        team = Team(name=name)
        session.add(team)
        session.flush()
    return team


def create_api_key(session: Session, *, team_name: str) -> str:
    """Mint a key for `team_name` (created if new) and return it in clear; it cannot be shown again."""
    team = get_or_create_team(session, name=team_name)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(team_id=team.id, key_hash=hash_key(key), prefix=key[:12]))
    session.flush()
    return key


def team_for_key(session: Session, *, key: str) -> Team | None:
    row = session.execute(
        select(Team)
        .join(ApiKey, ApiKey.team_id == Team.id)
        .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    ).scalar_one_or_none()
    return row
