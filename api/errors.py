"""Domain errors -> HTTP status codes, in one place. Every error body is `ErrorBody`."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from store.db import is_unavailable
from store.errors import (
    IdempotencyConflict,
    InvalidDataset,
    InvalidSpec,
    InvalidTransition,
    NoSuchPart,
    NotFound,
    QuotaExceeded,
    StoreError,
    TooLarge,
)

log = logging.getLogger("rlad.api")

STATUS: dict[type[StoreError], int] = {
    NotFound: 404,
    NoSuchPart: 404,
    InvalidTransition: 409,
    IdempotencyConflict: 409,
    InvalidSpec: 422,
    InvalidDataset: 422,
    TooLarge: 413,
    QuotaExceeded: 429,
}
RETRY_AFTER_S: dict[type[StoreError], int] = {QuotaExceeded: 30}  # a Retry-After header on these (seconds)
DB_RETRY_AFTER_S = 5
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    503: "unavailable",
}


def error_response(
    status: int,
    code: str,
    message: str,
    fields: list[tuple[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = {
        "error": {"code": code, "message": message, "fields": [{"field": f, "message": m} for f, m in (fields or [])]}
    }
    return JSONResponse(body, status_code=status, headers=headers)


def database_unavailable_response() -> JSONResponse:
    return error_response(
        503,
        "database_unavailable",
        "the database is unavailable; retry after the Retry-After seconds",
        headers={"Retry-After": str(DB_RETRY_AFTER_S)},
    )


def _loc(loc: tuple[str | int, ...]) -> str:
    # ("body", "task", "levels", 0) -> "task.levels.0"; ("query", "limit") -> "limit" (query)
    where, *rest = loc
    path = ".".join(str(p) for p in rest) or str(where)
    return path if where == "body" else f"{path} ({where})"


def install(app: FastAPI) -> None:
    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError) -> JSONResponse:
        fields: list[tuple[str, str]] = []
        if isinstance(exc, InvalidSpec):
            fields = exc.errors
        elif isinstance(exc, InvalidDataset) and exc.line is not None:
            fields = [(f"line {exc.line}", str(exc))]
        retry = RETRY_AFTER_S.get(type(exc))
        return error_response(
            STATUS.get(type(exc), 400),
            exc.code,
            str(exc),
            fields,
            headers={"Retry-After": str(retry)} if retry else None,
        )

    @app.exception_handler(DBAPIError)
    @app.exception_handler(PoolTimeout)
    async def _database(request: Request, exc: Exception) -> JSONResponse:
        if is_unavailable(exc):
            # the details (host, port, driver message) stay in the server log
            log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
            return database_unavailable_response()
        log.exception("database error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal error; the server log has the details")

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        bad_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
        if bad_json is not None:
            where = bad_json["loc"][-1]
            reason = (bad_json.get("ctx") or {}).get("error", bad_json["msg"])
            return error_response(
                400,
                "bad_request",
                f"the body is not valid JSON: {reason} at character {where}; fix: send a JSON object",
            )
        fields = [(_loc(tuple(e["loc"])), e["msg"]) for e in errors]
        msg = "invalid request: " + "; ".join(f"{f}: {m}" for f, m in fields)
        return error_response(422, "invalid_request", msg, fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal error; the server log has the details")
