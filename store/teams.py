"""Teams and API keys. A key is shown once, at creation; only its sha256 is stored.

A key has a role (`KeyRole`): read (poll, list, download), write (also submit, cancel, upload datasets) or
admin (also list, create, rotate and revoke the team's keys, read its audit log and its webhook secret).
`required_role` is the one rule: the API checks a request's method and route against it before the body is
read. A key may expire
(`expires_at`); a revoked or expired key is refused at once by the database lookup, and within
`KEY_CACHE_TTL_S` by every API process's cache of recently seen keys. `last_used_at` is kept to the minute
(written on the first use of a key in a minute, not on every request).

Rotation without downtime: `rotate_key` mints a new key with the old one's name and role and lets the old one
run out after a grace period, so clients can switch over while both work.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from store import audit
from store.errors import NotFound
from store.models import ApiKey, KeyRole, Team, utcnow

KEY_PREFIX = "rlad_"
KEY_CACHE_TTL_S = 1.0  # how long an API process trusts a key it has seen: revocation takes effect within it
LAST_USED_RESOLUTION = timedelta(minutes=1)

# the one rule of what each role may do: method -> the least role allowed; the admin-only routes on top
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ADMIN_PATHS = ("/v1/keys", "/v1/audit", "/v1/webhook-secret")  # and everything under them


def required_role(method: str, path: str) -> KeyRole:
    """The least role a request needs: admin for key management, the audit log and the webhook secret, write
    for any other change, read for the rest."""
    if any(path == p or path.startswith(p + "/") for p in ADMIN_PATHS):
        return KeyRole.admin
    return KeyRole.write if method.upper() in WRITE_METHODS else KeyRole.read


_RANK = {KeyRole.read: 0, KeyRole.write: 1, KeyRole.admin: 2}


def allows(role: KeyRole, needed: KeyRole) -> bool:
    return _RANK[role] >= _RANK[needed]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyOwner:
    """Who a key is: its team, its id and its role."""

    team_id: str
    team_name: str
    key_id: str
    role: KeyRole
    use_unrecorded: bool = False


def get_or_create_team(session: Session, *, name: str) -> Team:
    team = session.scalar(select(Team).where(Team.name == name))
    if team is None:
        team = Team(name=name)
        session.add(team)
        session.flush()
    return team


def mint_key(
    session: Session,
    *,
    team_id: str,
    role: KeyRole = KeyRole.admin,
    name: str | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """A new key of `team_id`; returns its row and the key in clear (it cannot be shown again)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        team_id=team_id, key_hash=hash_key(key), prefix=key[:12], name=name, role=KeyRole(role), expires_at=expires_at
    )
    session.add(row)
    session.flush()
    return row, key


def create_api_key(
    session: Session,
    *,
    team_name: str,
    role: KeyRole = KeyRole.admin,
    name: str | None = None,
    expires_at: datetime | None = None,
) -> str:
    """Mint a key for `team_name` (created if new) and return it in clear; it cannot be shown again. What the
    operator runs (`rlad keys create`); a team's admin key mints more over the API (POST /v1/keys)."""
    team = get_or_create_team(session, name=team_name)
    row, key = mint_key(session, team_id=team.id, role=role, name=name, expires_at=expires_at)
    audit.record(session, team_id=team.id, key_id=None, action="key.create", target=row.id, data=_described(row))
    return key


def owner_of_key(session: Session, *, key: str) -> KeyOwner | None:
    """The owner of a live key (not revoked, not expired), else None. A read: `use_unrecorded` says whether the
    caller should `note_use` it."""
    digest = hash_key(key)
    now = utcnow()
    row = session.execute(
        select(ApiKey, Team.name).join(Team, Team.id == ApiKey.team_id).where(ApiKey.key_hash == digest)
    ).one_or_none()
    if row is None:
        return None
    api_key, team_name = row
    # the lookup went by an index on the hash; compare the secrets' digests once more in constant time
    if not hmac.compare_digest(api_key.key_hash, digest) or not is_live(api_key, now):
        return None
    stale = api_key.last_used_at is None or now - api_key.last_used_at >= LAST_USED_RESOLUTION
    return KeyOwner(api_key.team_id, team_name, api_key.id, KeyRole(api_key.role), use_unrecorded=stale)


def note_use(session: Session, *, key_id: str) -> None:
    """Record that a key was used now, unless that was recorded less than a minute ago (in a transaction)."""
    now = utcnow()
    session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id)
        .where((ApiKey.last_used_at.is_(None)) | (ApiKey.last_used_at < now - LAST_USED_RESOLUTION))
        .values(last_used_at=now)
    )


def team_for_key(session: Session, *, key: str) -> Team | None:
    owner = owner_of_key(session, key=key)
    return session.get(Team, owner.team_id) if owner else None


def is_live(key: ApiKey, now: datetime | None = None) -> bool:
    now = now or utcnow()
    return key.revoked_at is None and (key.expires_at is None or key.expires_at > now)


def list_keys(session: Session, *, team_id: str) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).where(ApiKey.team_id == team_id).order_by(ApiKey.created_at)))


def get_key(session: Session, *, team_id: str, key_id: str) -> ApiKey:
    key = session.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.team_id == team_id))
    if key is None:  # another team's key is no key
        raise NotFound("key", key_id)
    return key


def revoke_key(session: Session, *, team_id: str, key_id: str) -> ApiKey:
    """Revoke a key of the team (again: no change). Its dashboard sign-ins end with it."""
    key = get_key(session, team_id=team_id, key_id=key_id)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key


def rotate_key(session: Session, *, team_id: str, key_id: str, grace: timedelta) -> tuple[ApiKey, str, ApiKey]:
    """A new key with the old one's name, role and expiry; the old one expires after `grace` (at once for a zero
    grace). Returns (new row, new key in clear, old row)."""
    old = get_key(session, team_id=team_id, key_id=key_id)
    if not is_live(old):
        raise NotFound("live key", key_id)
    new, clear = mint_key(session, team_id=team_id, role=KeyRole(old.role), name=old.name, expires_at=old.expires_at)
    ends = utcnow() + grace
    old.expires_at = min(old.expires_at, ends) if old.expires_at is not None else ends
    session.flush()
    return new, clear, old


def _described(key: ApiKey) -> dict[str, object]:
    return {
        "prefix": key.prefix,
        "name": key.name,
        "role": str(key.role),
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
    }


def describe(key: ApiKey) -> dict[str, object]:
    """What the audit log keeps of a key (never its secret or hash)."""
    return _described(key)
