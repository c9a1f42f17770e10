"""Request dependencies: database sessions (a transaction for writes, autocommit for reads), the caller's team."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi import Path as PathParam
from pydantic import StringConstraints
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from store import audit, sessions, teams
from store import jobs as job_store
from store.db import read_session, session_scope
from store.errors import NotFound
from store.models import Job, KeyRole
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
    key_id: str = ""  # the key (or the dashboard sign-in's key) the request came with
    role: KeyRole = KeyRole.admin

    @classmethod
    def of(cls, owner: teams.KeyOwner) -> Caller:
        return cls(owner.team_id, owner.team_name, owner.key_id, owner.role)


# key hash -> (caller, expiry): spares a query per request; a revoked or expired key stops working within the
# TTL (teams.KEY_CACHE_TTL_S, 1 s) in every API process, the poll fast path included
_KEY_CACHE: dict[str, tuple[Caller, float]] = {}

UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def _lookup(key: str) -> Caller | None:
    with read_session() as s:
        owner = teams.owner_of_key(s, key=key)
    if owner is None:
        return None
    if owner.use_unrecorded:
        with session_scope() as s:
            teams.note_use(s, key_id=owner.key_id)
    return Caller.of(owner)


async def json_body(request: Request) -> None:
    """A JSON route's body must be JSON (no Content-Type is read as JSON, as FastAPI does)."""
    content_type = request.headers.get("content-type")
    if content_type is None:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise HTTPException(415, "send the body as JSON with Content-Type: application/json")


def audited(session: Session, caller: Caller, request: Request, action: str, target: str, **data: Any) -> None:
    """Add the audit log's entry for what `caller` just did (store.audit), in the request's transaction."""
    audit.record(
        session,
        team_id=caller.team_id,
        key_id=caller.key_id or None,
        action=action,
        target=target,
        address=client_address(request),
        data=data,
    )


def forget_key(key_id: str) -> None:
    """Drop a revoked key from this process's cache at once (other processes: within the cache's TTL)."""
    for digest, (caller, _) in list(_KEY_CACHE.items()):
        if caller.key_id == key_id:
            _KEY_CACHE.pop(digest, None)


def client_address(request: Request) -> str | None:
    """The client's IP address as the server saw it (behind a proxy: run uvicorn with --proxy-headers and
    --forwarded-allow-ips so that it is the proxy's X-Forwarded-For client)."""
    return request.client.host if request.client else None


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


SESSION_COOKIE = "rlad_session"  # the dashboard's sign-in: a random token (a `ui_sessions` row), never the API key
CSRF_HEADER = "x-requested-with"  # cookie-authenticated writes must carry it (a cross-site form cannot)
CALLER_STATE = "rlad_caller"  # scope["state"] key where `api.edge.EdgeGuard` leaves the authenticated caller
_SAFE = {"GET", "HEAD", "OPTIONS"}


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers=UNAUTHORIZED)


async def caller_for_key(key: str) -> Caller | None:
    hit = _cached(key)
    if hit is not None:
        return hit
    now = time.monotonic()
    caller = await run_in_threadpool(_lookup, key)
    if caller is not None:
        if len(_KEY_CACHE) > 10_000:
            _KEY_CACHE.clear()
        _KEY_CACHE[teams.hash_key(key)] = (caller, now + teams.KEY_CACHE_TTL_S)
    return caller


def _lookup_session(token: str) -> Caller | None:
    with read_session() as s:
        owner = sessions.owner_of_session(s, token=token)
        return Caller.of(owner) if owner else None


async def caller_for_session(token: str) -> Caller | None:
    """The team of a dashboard sign-in. Not cached: signing out must end it at once in every process."""
    return await run_in_threadpool(_lookup_session, token)


async def authenticate(request: Request) -> Caller:
    """The caller of `Authorization: Bearer <key>`, else of the dashboard's session cookie (whose writes must
    carry the CSRF header). Reads headers only, never the body. Raises a 401 HTTPException."""
    key = _bearer(request.headers.get("authorization", ""))
    if key is not None:
        caller = await caller_for_key(key)
        if caller is None:
            raise _unauthorized("unknown, expired or revoked API key; fix: ask the team's admin for a live key")
        return caller
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise _unauthorized(
            "missing API key; fix: send 'Authorization: Bearer <key>' (mint one with `rlad keys create --team NAME`)"
        )
    if request.method not in _SAFE and not request.headers.get(CSRF_HEADER):
        raise _unauthorized(
            f"a signed-in browser's writes need the {CSRF_HEADER} header; "
            "fix: send it (the dashboard does), or use 'Authorization: Bearer <key>'"
        )
    caller = await caller_for_session(token)
    if caller is None:
        raise _unauthorized("the dashboard sign-in has ended (signed out or expired); fix: sign in again")
    return caller


async def current_caller(request: Request) -> Caller:
    """The team of the request's API key or sign-in (async: a cached key costs no thread hop and no query).
    /v1 requests were authenticated by `api.edge.EdgeGuard` before their body was read: reuse its answer."""
    caller = request.scope.get("state", {}).get(CALLER_STATE)
    return caller if isinstance(caller, Caller) else await authenticate(request)


# a job id is `job_` and hex (store.models.new_id); anything else is no job, answered without a query (and
# never sent to PostgreSQL, which refuses a NUL in a string with an error)
JOB_ID_PATTERN = r"^job_[0-9a-f]{1,60}$"
_JOB_ID = re.compile(JOB_ID_PATTERN)
# free text in a query parameter (metric keys, methods): printable, no control characters (NUL above all)
PRINTABLE_PATTERN = r"^[^\x00-\x1f\x7f]+$"


def is_job_id(value: str) -> bool:
    return _JOB_ID.fullmatch(value) is not None


async def job_id_path(job_id: Annotated[str, PathParam(description="a job id (`job_` and hex)")]) -> str:
    if not is_job_id(job_id):
        raise NotFound("job", job_id)
    return job_id


def result_store(settings: Annotated[Settings, Depends(get_settings)]) -> ResultStore:
    return get_result_store(settings.resolved_result_root)


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
ReadSessionDep = Annotated[Session, Depends(get_read_session, scope="function")]
CallerDep = Annotated[Caller, Depends(current_caller)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ResultStore, Depends(result_store)]
JobId = Annotated[str, Depends(job_id_path)]  # a {job_id} path parameter: 404 unless shaped like a job id
QueryText = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=PRINTABLE_PATTERN)]


def owned_job(job_id: JobId, session: ReadSessionDep, caller: CallerDep) -> Job:
    """The path's job, if it is the caller's team's: another team's job is not found (404), as a missing one."""
    return job_store.get_job(session, team_id=caller.team_id, job_id=job_id)


OwnedJob = Annotated[Job, Depends(owned_job)]  # a {job_id} route's job, owned by the caller's team
