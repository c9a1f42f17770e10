"""Request dependencies: database sessions (a transaction for writes, autocommit for reads), the caller's team."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from store import teams
from store.db import read_session, session_scope
from store.results import ResultStore, get_result_store
from store.settings import Settings, get_settings


def get_session() -> Iterator[Session]:
    """One transaction, committed when the handler returns, before the response is sent (scope="function")."""
    with session_scope() as session:
        yield session


def get_read_session() -> Iterator[Session]:
    """Reads without a transaction: fewer round trips, and on SQLite no write lock."""
    with read_session() as session:
        yield session


@dataclass(frozen=True)
class Caller:
    team_id: str
    team_name: str


# key hash -> (caller, expiry): spares a query per request; a revoked key stops working within the TTL
_KEY_CACHE: dict[str, tuple[Caller, float]] = {}
_KEY_TTL_S = 30.0

UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def _lookup(key: str) -> Caller | None:
    with read_session() as s:
        team = teams.team_for_key(s, key=key)
        return Caller(team.id, team.name) if team else None


def _bearer(authorization: str) -> str | None:
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


def cached_caller(authorization: str) -> Caller | None:
    """The caller of a recently seen key, without a query (None: not cached, or no bearer key)."""
    key = _bearer(authorization)
    return _cached(key) if key else None


def _cached(key: str) -> Caller | None:
    hit = _KEY_CACHE.get(teams.hash_key(key))
    return hit[0] if hit and hit[1] > time.monotonic() else None


SESSION_COOKIE = "rlad_key"  # the dashboard's sign-in: the key in a Secure, HttpOnly, SameSite=Strict cookie
CSRF_HEADER = "x-requested-with"  # cookie-authenticated writes must carry it (a cross-site form cannot)
_SAFE = {"GET", "HEAD", "OPTIONS"}


def request_key(request: Request) -> str | None:
    """The request's API key: `Authorization: Bearer`, else the dashboard's cookie."""
    key = _bearer(request.headers.get("authorization", ""))
    if key is not None:
        return key
    key = request.cookies.get(SESSION_COOKIE)
    if key and request.method not in _SAFE and not request.headers.get(CSRF_HEADER):
        raise HTTPException(401, f"a signed-in browser's writes need the {CSRF_HEADER} header; "
                                 "fix: send it (the dashboard does), or use 'Authorization: Bearer <key>'",
                            headers=UNAUTHORIZED)
    return key or None


async def caller_for_key(key: str) -> Caller | None:
    hit = _cached(key)
    if hit is not None:
        return hit
    now = time.monotonic()
    caller = await run_in_threadpool(_lookup, key)
    if caller is not None:
        if len(_KEY_CACHE) > 10_000:
            _KEY_CACHE.clear()
        _KEY_CACHE[teams.hash_key(key)] = (caller, now + _KEY_TTL_S)
    return caller


async def current_caller(request: Request) -> Caller:
    """The team of the request's API key (async: a cached key costs no thread hop and no query)."""
    key = request_key(request)
    if key is None:
        raise HTTPException(401, "missing API key; fix: send 'Authorization: Bearer <key>' "
                                 "(mint one with `rlad keys create --team NAME`)", headers=UNAUTHORIZED)
    caller = await caller_for_key(key)
    if caller is None:
        raise HTTPException(401, "unknown or revoked API key", headers=UNAUTHORIZED)
    return caller


def result_store(settings: Annotated[Settings, Depends(get_settings)]) -> ResultStore:
    return get_result_store(settings.resolved_result_root)


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
ReadSessionDep = Annotated[Session, Depends(get_read_session, scope="function")]
CallerDep = Annotated[Caller, Depends(current_caller)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ResultStore, Depends(result_store)]
