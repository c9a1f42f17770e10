"""The HTTP edge: FastAPI routes under /v1, request/response schemas, auth. Routes validate, call one store
function and return a typed schema; `api.errors` maps domain errors to status codes in one place."""
