"""The team dashboard: server-rendered pages (Jinja2) over the same store and the same team keys as /v1.

Signing in checks the key once and starts a server-side session (`store.sessions`): the Secure, HttpOnly,
SameSite=Strict cookie holds a random token, never the key, for `RLAD_UI_SESSION_TTL_S`; signing out deletes
the session, so the cookie stops working at once. The pages' scripts call the /v1 API with that cookie
(writes also send the X-Requested-With header, see `api.deps.authenticate`). Charts are uPlot,
served from `api/static/vendor` (no CDN, no build step)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from api.deps import (
    SESSION_COOKIE,
    Caller,
    ReadSessionDep,
    SettingsDep,
    caller_for_key,
    caller_for_session,
    is_job_id,
)
from api.presenters import job_public
from rlad_core.config import METHODS
from store import jobs as job_store
from store import sessions
from store.db import session_scope
from store.errors import NotFound
from store.models import JobStatus

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True, default=str)
router = APIRouter(include_in_schema=False)

MAX_COMPARE = 5


def _safe_next(path: str | None) -> str:
    # only our own pages: never an absolute or protocol-relative URL (no open redirect)
    return path if path and path.startswith("/ui/") and not path.startswith("//") else "/ui/jobs"


async def _signed_in(request: Request) -> Caller | None:
    token = request.cookies.get(SESSION_COOKIE)
    return await caller_for_session(token) if token else None


def _start_session(team_id: str, key_id: str, ttl_s: float) -> str:
    with session_scope() as s:
        return sessions.create_session(s, team_id=team_id, ttl_s=ttl_s, key_id=key_id or None)


def _end_session(token: str) -> None:
    with session_scope() as s:
        sessions.delete_session(s, token=token)


PageCaller = Annotated[Caller | None, Depends(_signed_in)]  # None: not signed in -> the sign-in page


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?next={quote(target)}", status_code=303)


def _page(request: Request, name: str, caller: Caller, status_code: int = 200, **ctx: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, {"team": caller.team_name, **ctx}, status_code=status_code)


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/ui/jobs", status_code=303)


@router.get("/ui/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    return templates.TemplateResponse(request, "login.html", {"next": _safe_next(next), "error": None})


@router.post("/ui/login", response_model=None)
async def login(
    request: Request, settings: SettingsDep, key: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/ui/jobs"
) -> Response:
    key = key.strip()
    caller = await caller_for_key(key) if key else None
    if caller is None:
        error = "Enter your team's API key." if not key else "That key is unknown, expired or revoked."
        return templates.TemplateResponse(
            request, "login.html", {"next": _safe_next(next), "error": error}, status_code=401
        )
    token = await run_in_threadpool(_start_session, caller.team_id, caller.key_id, settings.ui_session_ttl_s)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(settings.ui_session_ttl_s),
        httponly=True,
        secure=settings.cookie_secure,
        samesite="strict",
        path="/",
    )
    return response


@router.post("/ui/logout")
def logout(request: Request) -> RedirectResponse:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        _end_session(token)  # a copy of the cookie stops working too, not only this browser's
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response


@router.get("/ui/jobs", response_model=None)
def jobs_page(request: Request, caller: PageCaller) -> Response:
    if caller is None:
        return _to_login(request)
    return _page(
        request, "jobs.html", caller, page="jobs", statuses=[s.value for s in JobStatus], methods=list(METHODS)
    )


@router.get("/ui/jobs/{job_id}", response_model=None)
def job_page(request: Request, job_id: str, session: ReadSessionDep, caller: PageCaller) -> Response:
    if caller is None:
        return _to_login(request)
    try:
        if not is_job_id(job_id):  # never sent to the database (PostgreSQL refuses a NUL)
            raise NotFound("job", job_id)
        job = job_public(session, job_store.get_job(session, team_id=caller.team_id, job_id=job_id))
    except NotFound:
        return _page(request, "not_found.html", caller, status_code=404, page="not-found", job_id=job_id)
    return _page(request, "job.html", caller, page="job", job=job)


@router.get("/ui/compare", response_model=None)
def compare_page(
    request: Request, session: ReadSessionDep, caller: PageCaller, job: Annotated[list[str] | None, Query()] = None
) -> Response:
    if caller is None:
        return _to_login(request)
    ids = list(dict.fromkeys(job or []))[:MAX_COMPARE]
    found, missing = [], []
    for job_id in ids:
        try:
            if not is_job_id(job_id):
                raise NotFound("job", job_id)
            found.append(job_public(session, job_store.get_job(session, team_id=caller.team_id, job_id=job_id)))
        except NotFound:
            missing.append(job_id)
    return _page(request, "compare.html", caller, page="compare", jobs=found, missing=missing, max_compare=MAX_COMPARE)


@router.get("/ui/queue", response_model=None)
def queue_page(request: Request, caller: PageCaller) -> Response:
    if caller is None:
        return _to_login(request)
    return _page(request, "queue.html", caller, page="queue")
