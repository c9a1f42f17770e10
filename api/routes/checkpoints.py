"""Checkpoints of a job: list, details (files with sha256), whole-directory download, single files (Range)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, StreamingResponse

from api.deps import OwnedJob, ReadSessionDep, StoreDep
from api.downloads import TarStream
from api.responses import E401, E404, E422, Responses
from api.schemas import CheckpointDetail, CheckpointFile, CheckpointList, CheckpointPublic
from rlad_core import layout
from store import results
from store.errors import NoSuchPart, NotFound
from store.models import Checkpoint

router = APIRouter(prefix="/v1/jobs", tags=["checkpoints"])
E404C: Responses = {
    404: {"model": E404[404]["model"], "description": "no such job for this team, or no such checkpoint"}
}
Step = Annotated[int, PathParam(ge=0, le=2**31 - 1)]
Part = Annotated[
    layout.Part,
    Query(
        description="all: every file (resumes a run); model: the loadable model only (weights or a LoRA adapter, "
        "config, tokenizer); adapter: a LoRA student's adapter; merged: a LoRA student's merged weights "
        "(merge_lora_on_save) as a plain model"
    ),
]


class LargeFileResponse(FileResponse):
    chunk_size = 4 * 1024 * 1024  # Starlette's 64 KB default caps a download at a few hundred MB/s


def _public(job_id: str, c: Checkpoint) -> CheckpointPublic:
    return CheckpointPublic(
        step=c.step,
        kind=c.kind,
        bytes=c.bytes,
        sha256=c.sha256,
        metrics=c.metrics,
        created_at=c.created_at,
        download_url=f"/v1/jobs/{job_id}/checkpoints/{c.step}/download",
    )


@router.get("/{job_id}/checkpoints", response_model=CheckpointList, responses={**E401, **E404})
def list_checkpoints(job: OwnedJob, session: ReadSessionDep) -> CheckpointList:
    return CheckpointList(items=[_public(job.id, c) for c in results.list_checkpoints(session, job_id=job.id)])


@router.get("/{job_id}/checkpoints/{step}", response_model=CheckpointDetail, responses={**E401, **E404C, **E422})
def checkpoint_detail(job: OwnedJob, step: Step, session: ReadSessionDep, store: StoreDep) -> CheckpointDetail:
    c = results.get_checkpoint(session, job_id=job.id, step=step)
    files = [CheckpointFile(name=f.name, bytes=f.bytes, sha256=f.sha256) for f in store.checkpoint_files(c.location)]
    return CheckpointDetail(**_public(job.id, c).model_dump(), files=files)


@router.get(
    "/{job_id}/checkpoints/{step}/download",
    responses={
        200: {
            "content": {"application/x-tar": {}},
            "description": "tar of the Hugging Face directory (or the part asked for); manifest.json inside lists "
            "every file's sha256",
        },
        **E401,
        **E404C,
        **E422,
    },
)
def download(
    job: OwnedJob, step: Step, session: ReadSessionDep, store: StoreDep, part: Part = "all"
) -> StreamingResponse:
    """The checkpoint, or a part of it, as a tar stream (constant memory; exact Content-Length)."""
    c = results.get_checkpoint(session, job_id=job.id, step=step)
    names = [f.name for f in store.checkpoint_files(c.location)]
    try:
        chosen = layout.part_files(names, part)
    except layout.PartMissing as exc:
        raise NoSuchPart(part, step, str(exc)) from None
    prefix = layout.download_name(job.id, step, part)
    tar = TarStream([(f"{prefix}/{local}", store.file_path(c.location, src)) for local, src in sorted(chosen.items())])
    return StreamingResponse(
        iter(tar),
        media_type="application/x-tar",
        headers={
            "Content-Length": str(tar.length),
            "Content-Disposition": f'attachment; filename="{prefix}.tar"',
            "X-Checkpoint-Sha256": c.sha256,
        },
    )


@router.get(
    "/{job_id}/checkpoints/{step}/files/{name:path}",
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the file"},
        206: {"content": {"application/octet-stream": {}}, "description": "the requested byte range"},
        416: {"description": "the Range lies outside the file"},
        **E401,
        **E404C,
        **E422,
    },
)
def download_file(job: OwnedJob, step: Step, name: str, session: ReadSessionDep, store: StoreDep) -> LargeFileResponse:
    """One file of a checkpoint; supports HTTP Range requests (resumable downloads)."""
    c = results.get_checkpoint(session, job_id=job.id, step=step)
    files = {f.name: f for f in store.checkpoint_files(c.location)}
    if name not in files:
        raise NotFound("file", f"{name} in checkpoint {step}")
    return LargeFileResponse(
        store.file_path(c.location, name), filename=name.rsplit("/", 1)[-1], headers={"X-Sha256": files[name].sha256}
    )
