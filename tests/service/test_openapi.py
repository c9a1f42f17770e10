"""Schemathesis over the OpenAPI document: generated requests (bounded) never get a 5xx, and every status
code and body the API returns is one the document declares."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from tests.service.conftest import auth

# the app connects to nothing until a request comes; the fixtures below point it at a fresh database
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app())


@pytest.fixture(params=["sqlite"])
def db_url(request, sqlite_url):  # schemathesis runs on SQLite only: it is about the HTTP contract
    return sqlite_url


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_5xx_and_only_documented_responses(case, keys) -> None:
    if case.path == "/v1/jobs/{job_id}/metrics/stream":
        case.query = {**(case.query or {}), "poll_s": 0.1}
    case.call_and_validate(
        headers=auth(keys["red"]),
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
    )
