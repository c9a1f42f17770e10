"""The poll cache of `GET /v1/jobs/{id}`: serialized job bodies per process (api/fastpath.py answers from it)."""

from __future__ import annotations

import asyncio
import time

from starlette.concurrency import run_in_threadpool

from api.presenters import job_public
from store import jobs as job_store
from store.db import read_session


class _JobCache:
    """Serialized `GET /v1/jobs/{id}` bodies, per process, for `job_cache_ttl_s`: a dashboard wall polling one
    job costs one query a second, not one per poll. Concurrent misses of one job share one query (without
    that, every poll in flight when an entry expires queries at once and the slowest wait for all of them).
    This process's own writes (cancel) drop the entry."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[str, bytes, float]] = {}  # job id -> (team id, body, expiry)
        self.loading: dict[tuple[str, str], asyncio.Future[bytes]] = {}

    def get(self, job_id: str, team_id: str) -> bytes | None:
        hit = self.entries.get(job_id)
        if hit is None or hit[2] < time.monotonic() or hit[0] != team_id:
            return None
        return hit[1]

    def put(self, job_id: str, team_id: str, body: bytes, ttl_s: float) -> None:
        if len(self.entries) > 50_000:
            self.entries.clear()
        self.entries[job_id] = (team_id, body, time.monotonic() + ttl_s)

    def drop(self, job_id: str) -> None:
        self.entries.pop(job_id, None)
        for key in [k for k in self.loading if k[0] == job_id]:
            del self.loading[key]  # a load that began before this write must not fill the cache

    async def load(self, job_id: str, team_id: str, ttl_s: float) -> bytes:
        if ttl_s <= 0:
            return await run_in_threadpool(_job_json, job_id, team_id)
        key = (job_id, team_id)
        future = self.loading.get(key)
        if future is None:
            future = asyncio.ensure_future(run_in_threadpool(_job_json, job_id, team_id))
            self.loading[key] = future

            def done(f: asyncio.Future[bytes]) -> None:
                if self.loading.get(key) is f:
                    del self.loading[key]
                    if not f.cancelled() and f.exception() is None:
                        self.put(job_id, team_id, f.result(), ttl_s)

            future.add_done_callback(done)
        return await asyncio.shield(future)  # one caller going away does not cancel the others' query


job_cache = _JobCache()


def _job_json(job_id: str, team_id: str) -> bytes:
    with read_session() as session:
        return (
            job_public(session, job_store.get_job(session, team_id=team_id, job_id=job_id)).model_dump_json().encode()
        )
