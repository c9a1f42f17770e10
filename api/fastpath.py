"""The poll fast path: `GET /v1/jobs/{id}` answered from the per-process caches (API key -> team, job ->
response body) before the request enters FastAPI's routing and dependency machinery, which costs several
times a bare ASGI response. Anything not cached, and every other request, goes to the FastAPI app, which
fills the caches; so the fast path never answers differently from the route (tests/service/test_api.py). It
answers only with a token of the key's rate limit (api.ratelimit)."""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from api import ratelimit
from api.deps import cached_caller
from api.job_cache import job_cache
from store.settings import get_settings

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
        if caller is None:
            return None
        body = job_cache.get(job_id, caller.team_id)
        if body is None:
            return None
        settings = get_settings()
        # only with a token of the key's rate limit; without one the edge guard answers (429)
        limited = ratelimit.buckets(settings.rate_limit_per_s, settings.rate_limit_burst).take(
            caller.key_id or caller.team_id
        )
        return body if limited == 0 else None
