"""The baseline of the API benchmark: a bare Starlette route that returns a fixed JSON body (the bytes of a
real `GET /v1/jobs/{id}` response, from RLAD_BENCH_BODY), served by the same uvicorn settings."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

BODY = open(os.environ["RLAD_BENCH_BODY"], "rb").read()  # noqa: SIM115


async def job(request):  # noqa: ANN001, ANN201
    return Response(BODY, media_type="application/json")


app = Starlette(routes=[Route("/v1/jobs/{job_id}", job)])
