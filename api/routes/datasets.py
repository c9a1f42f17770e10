"""Dataset uploads: JSONL validated line by line before it is stored; stored once per team and content."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from api.deps import PRINTABLE_PATTERN, CallerDep, ReadSessionDep, SessionDep, SettingsDep, StoreDep
from api.responses import E400, E401, E403, E422
from api.schemas import DatasetList, DatasetPublic, ErrorBody
from store import datasets as ds_store
from store.jobs import DATASET_SCHEME
from store.models import Dataset

log = logging.getLogger("rlad.api")
router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def _public(d: Dataset) -> DatasetPublic:
    return DatasetPublic(
        id=d.id,
        name=d.name,
        sha256=d.sha256,
        bytes=d.bytes,
        lines=d.lines,
        created_at=d.created_at,
        task_path=f"{DATASET_SCHEME}{d.id}",
    )


@router.post(
    "",
    status_code=201,
    response_model=DatasetPublic,
    responses={
        413: {"model": ErrorBody, "description": "the file is larger than the upload limit (RLAD_MAX_UPLOAD_BYTES)"},
        **E400,
        **E401,
        **E403,
        **E422,
        429: {"model": ErrorBody, "description": "the team is at its storage limit (RLAD_MAX_STORAGE_BYTES_PER_TEAM)"},
    },
)
def upload(
    session: SessionDep,
    caller: CallerDep,
    settings: SettingsDep,
    store: StoreDep,
    file: Annotated[UploadFile, File(description='JSONL: one {"prompt": ..., "answer": ...} per line')],
    name: Annotated[str | None, Form(max_length=200, pattern=PRINTABLE_PATTERN)] = None,
) -> DatasetPublic:
    """Upload a JSONL dataset for `jsonl` tasks; use the returned `task_path` as the task's `path`."""
    ds = ds_store.ingest_dataset(
        session,
        team_id=caller.team_id,
        upload=file.file,
        filename=file.filename,
        name=name,
        store=store,
        max_bytes=settings.max_upload_bytes,
        storage_limit=settings.max_storage_bytes_per_team,
    )
    log.info("dataset %s: %d examples uploaded by team %s", ds.id, ds.lines, caller.team_name)
    return _public(ds)


@router.get("", response_model=DatasetList, responses={**E401})
def list_datasets(session: ReadSessionDep, caller: CallerDep) -> DatasetList:
    return DatasetList(items=[_public(d) for d in ds_store.list_datasets(session, team_id=caller.team_id)])
