"""Domain errors -> HTTP status codes, in one place. Every error body is `ErrorBody`."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from store.errors import (
    IdempotencyConflict,
    InvalidDataset,
    InvalidSpec,
    InvalidTransition,
    NotFound,
    StoreError,
    TooLarge,
)

log = logging.getLogger("rlad.api")

STATUS = {NotFound: 404, InvalidTransition: 409, IdempotencyConflict: 409, InvalidSpec: 422, InvalidDataset: 422,
          TooLarge: 413}


def error_response(status: int, code: str, message: str, fields: list[tuple[str, str]] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message,
                      "fields": [{"field": f, "message": m} for f, m in (fields or [])]}}
    return JSONResponse(body, status_code=status, headers=headers)


def _loc(loc: tuple) -> str:
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
        return error_response(STATUS.get(type(exc), 400), exc.code, str(exc), fields)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [(_loc(tuple(e["loc"])), e["msg"]) for e in exc.errors()]
        msg = "invalid request: " + "; ".join(f"{f}: {m}" for f, m in fields)
        return error_response(422, "invalid_request", msg, fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal error; the server log has the details")
