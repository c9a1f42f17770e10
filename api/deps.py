"""Request dependencies: a database session per request (committed after the handler), the caller's team."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session

from store import teams
from store.db import session_scope
from store.results import ResultStore, get_result_store
from store.settings import Settings, get_settings


def get_session() -> Iterator[Session]:
    """Committed when the handler returns, before the response is sent (scope="function" below)."""
    with session_scope() as session:
        yield session


@dataclass(frozen=True)
class Caller:
    team_id: str
    team_name: str


# key hash -> (caller, expiry): spares a query per request; a revoked key stops working within the TTL
_KEY_CACHE: dict[str, tuple[Caller, float]] = {}
_KEY_TTL_S = 30.0

UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def current_caller(request: Request, session: Annotated[Session, Depends(get_session, scope="function")]) -> Caller:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise HTTPException(401, "missing API key; fix: send 'Authorization: Bearer <key>' "
                                 "(mint one with `rlad keys create --team NAME`)", headers=UNAUTHORIZED)
    key = key.strip()
    digest = teams.hash_key(key)
    hit = _KEY_CACHE.get(digest)
    now = time.monotonic()
    if hit and hit[1] > now:
        return hit[0]
    team = teams.team_for_key(session, key=key)
    if team is None:
        raise HTTPException(401, "unknown or revoked API key", headers=UNAUTHORIZED)
    caller = Caller(team.id, team.name)
    if len(_KEY_CACHE) > 10_000:
        _KEY_CACHE.clear()
    _KEY_CACHE[digest] = (caller, now + _KEY_TTL_S)
    return caller


def result_store(settings: Annotated[Settings, Depends(get_settings)]) -> ResultStore:
    return get_result_store(settings.resolved_result_root)


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
CallerDep = Annotated[Caller, Depends(current_caller)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ResultStore, Depends(result_store)]
