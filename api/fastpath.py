"""The poll fast path: `GET /v1/jobs/{id}` answered from the per-process caches (API key -> team, job ->
response body) before the request enters FastAPI's routing and dependency machinery, which costs several
times a bare ASGI response. Anything not cached, and every other request, goes to the FastAPI app, which
fills the caches; so the fast path never answers differently from the route (tests/service/test_api.py)."""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from api.deps import cached_caller
from api.job_cache import job_cache

_JOB_PATH = re.compile(r"/v1/jobs/([A-Za-z0-9_]+)")


class JobPollFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and not scope.get("query_string"):
            m = _JOB_PATH.fullmatch(scope["path"])
            if m is not None:
                body = self._cached(scope, m.group(1))
                if body is not None:
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 200,
                            "headers": [
                                (b"content-length", str(len(body)).encode()),
                                (b"content-type", b"application/json"),
                            ],
                        }
                    )
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)

    @staticmethod
    def _cached(scope: Scope, job_id: str) -> bytes | None:
        authorization = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if authorization is None:
            return None
        caller = cached_caller(authorization.decode("latin-1"))
        return job_cache.get(job_id, caller.team_id) if caller is not None else None
