"""The FastAPI application: `uvicorn api.app:create_app --factory`."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api import dashboard, errors
from api.edge import EdgeGuard
from api.fastpath import JobPollFastPath
from api.routes import checkpoints, datasets, health, jobs, keys, metrics, queue
from api.schemas import SPEC_DEFS

log = logging.getLogger("rlad.api")


def create_app() -> FastAPI:
    app = FastAPI(
        title="RLAD platform",
        version="1",
        summary="Submit RL-aware distillation jobs (RLAD/TRRD, GRPO, KDRL, OPD, SFT), follow them, "
        "download checkpoints.",
        description="Every /v1 route needs `Authorization: Bearer <key>` and sees only the key's team. Errors are "
        '`{"error": {"code", "message", "fields": [{"field", "message"}]}}`.',
    )
    errors.install(app)
    for r in (
        jobs.router,
        metrics.router,
        checkpoints.router,
        datasets.router,
        queue.router,
        keys.router,
        health.router,
        dashboard.router,
    ):
        app.include_router(r)
    app.mount("/static", StaticFiles(directory=dashboard.STATIC_DIR), name="static")

    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = base_openapi()
            # the job spec's nested models (tasks) are referenced from the request body schema
            schema.setdefault("components", {}).setdefault("schemas", {}).update(SPEC_DEFS)
            schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for path, ops in schema["paths"].items():
                if path.startswith("/v1/"):
                    for op in ops.values():
                        op["security"] = [{"bearer": []}]
                        op["responses"].setdefault(
                            "429",
                            {
                                "description": "over the key's request rate (RLAD_RATE_LIMIT_PER_S); retry after "
                                "`Retry-After` seconds",
                                "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
                            },
                        )
                        # any /v1 call needs the database (the key lookup at least)
                        op["responses"].setdefault(
                            "503",
                            {
                                "description": "the database is unavailable; retry after `Retry-After` seconds",
                                "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
                            },
                        )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    # outermost: the poll fast path answers cached GET /v1/jobs/{id} before any other layer runs; then the
    # guard authenticates /v1 and caps bodies before anything reads one
    build_stack = app.build_middleware_stack
    app.build_middleware_stack = lambda: JobPollFastPath(EdgeGuard(build_stack()))  # type: ignore[method-assign]
    return app
