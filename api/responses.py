"""OpenAPI `responses` entries the routes share: each status code a route can answer, with the error body."""

from __future__ import annotations

from typing import Any

from api.schemas import ErrorBody

Responses = dict[int | str, dict[str, Any]]
E401: Responses = {401: {"model": ErrorBody, "description": "missing or unknown API key"}}
E403: Responses = {
    403: {
        "model": ErrorBody,
        "description": "the key's role does not allow this (read keys only read; keys and the audit log: admin)",
    }
}
E404: Responses = {404: {"model": ErrorBody, "description": "no such job for this team"}}
E409: Responses = {
    409: {"model": ErrorBody, "description": "the job's status does not allow this (e.g. resuming a finished job)"}
}
E400: Responses = {400: {"model": ErrorBody, "description": "the body could not be parsed (not JSON / not multipart)"}}
E422: Responses = {422: {"model": ErrorBody, "description": "invalid request; `fields` names each field and its fix"}}
E413: Responses = {413: {"model": ErrorBody, "description": "the body is larger than the server's limit"}}
E415: Responses = {
    415: {"model": ErrorBody, "description": "the body is not JSON (Content-Type must be application/json)"}
}
E429: Responses = {
    429: {
        "model": ErrorBody,
        "description": "the team has RLAD_MAX_ACTIVE_JOBS_PER_TEAM jobs queued or running, is at its storage "
        "limit (RLAD_MAX_STORAGE_BYTES_PER_TEAM), or the key is over its request rate; retry after `Retry-After` "
        "seconds",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    }
}
