"""The API's outer guard, a pure ASGI middleware that runs before any byte of a request body is read:

- every /v1 request is authenticated from its headers alone (`api.deps.authenticate`), so a caller without
  a valid key gets 401 however large a body it sends (parsing first let an anonymous 300 MB POST grow the
  process by 900 MB); the caller is left in the scope's state for `api.deps.current_caller`;
- a key over its request rate (`api.ratelimit`) gets 429 with Retry-After;
- a key whose role does not allow the request (`store.teams.required_role`: read keys only read, key
  management and the audit log need an admin key) gets 403, also before the body is read;
- request bodies are capped: a dataset upload (multipart) at `max_upload_bytes` plus room for the multipart
  framing, everything else at `max_json_bytes`. A Content-Length beyond the cap is refused at once with 413;
  a chunked (or lying) body is counted as it streams in and stopped with 413 at the cap, so nothing past it
  is held in memory or spooled to a temporary file.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import ratelimit
from api.deps import CALLER_STATE, authenticate
from api.errors import HTTP_CODES, database_unavailable_response, error_response
from store import teams
from store.db import is_unavailable
from store.models import KeyRole
from store.settings import get_settings

MULTIPART_ALLOWANCE = 64 * 1024  # boundaries, part headers and the small form fields around an uploaded file
UPLOAD_PATH = "/v1/datasets"


def _forbidden(role: KeyRole, needed: KeyRole) -> HTTPException:
    does = "manages keys and reads the audit log" if needed == KeyRole.admin else "submits, cancels and uploads"
    return HTTPException(
        403,
        f"this key's role is {role}: only a {needed} key {does}; fix: use a {needed} key of the team "
        "(its admin mints one: POST /v1/keys)",
    )


def _rate_limited(rate: float, wait_s: float) -> HTTPException:
    return HTTPException(
        429,
        f"too many requests with this key: the limit is {rate:g} a second (rate_limit_per_s); "
        f"fix: retry after {ratelimit.retry_after(wait_s)} s, poll less often, or stream metrics",
        headers={"Retry-After": ratelimit.retry_after(wait_s)},
    )


def _too_large(limit: int) -> HTTPException:
    return HTTPException(
        413,
        f"the request body is larger than {limit} bytes; fix: send a smaller body (dataset "
        "uploads: split the dataset, or raise RLAD_MAX_UPLOAD_BYTES on the server)",
    )


class EdgeGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith("/v1/"):
            try:
                caller = await authenticate(Request(scope))
            except HTTPException as exc:
                await self._answer(scope, receive, send, exc)
                return
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                await database_unavailable_response()(scope, receive, send)
                return
            needed = teams.required_role(scope["method"], scope["path"])
            if not teams.allows(caller.role, needed):  # before the body is read, as for a missing key
                await self._answer(scope, receive, send, _forbidden(caller.role, needed))
                return
            settings = get_settings()
            wait = ratelimit.buckets(settings.rate_limit_per_s, settings.rate_limit_burst).take(
                caller.key_id or caller.team_id
            )
            if wait > 0:
                await self._answer(scope, receive, send, _rate_limited(settings.rate_limit_per_s, wait))
                return
            scope["state"] = {**scope.get("state", {}), CALLER_STATE: caller}

        settings = get_settings()
        upload = scope["method"] == "POST" and scope["path"] == UPLOAD_PATH
        limit = settings.max_upload_bytes + MULTIPART_ALLOWANCE if upload else settings.max_json_bytes
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > limit:
            await self._answer(scope, receive, send, _too_large(limit))
            return
        await self.app(scope, _capped(receive, limit), send)

    @staticmethod
    async def _answer(scope: Scope, receive: Receive, send: Send, exc: HTTPException) -> None:
        response: Response = error_response(
            exc.status_code, HTTP_CODES.get(exc.status_code, "error"), str(exc.detail), headers=exc.headers
        )
        await response(scope, receive, send)


def _capped(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def receive_capped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                # raised inside the body read: FastAPI passes an HTTPException through to the error handler
                raise _too_large(limit)
        return message

    return receive_capped
