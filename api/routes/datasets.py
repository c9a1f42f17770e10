"""Dataset uploads: JSONL validated line by line before it is stored; stored once per team and content."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from api.deps import PRINTABLE_PATTERN, CallerDep, ReadSessionDep, SessionDep, SettingsDep, StoreDep
from api.routes.jobs import E400, E401, E422
from api.schemas import DatasetList, DatasetPublic, ErrorBody
from rlad_core.tasks.jsonl import DatasetError, validate_jsonl_lines
from store import datasets as ds_store
from store.errors import InvalidDataset, TooLarge
from store.jobs import DATASET_SCHEME
from store.models import Dataset

log = logging.getLogger("rlad.api")
router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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
        **E422,
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
    limit = settings.max_upload_bytes
    digest, size = hashlib.sha256(), 0
    with tempfile.TemporaryFile() as tmp:
        while chunk := file.file.read(1 << 20):
            size += len(chunk)
            if size > limit:
                raise TooLarge(
                    f"the upload is larger than {limit} bytes; fix: split the dataset or raise "
                    "RLAD_MAX_UPLOAD_BYTES on the server"
                )
            digest.update(chunk)
            tmp.write(chunk)
        source = file.filename or "upload.jsonl"
        tmp.seek(0)
        try:
            examples = validate_jsonl_lines(tmp, source=source)
        except DatasetError as exc:
            raise InvalidDataset(str(exc), line=exc.line) from None
        tmp.seek(0)
        location = store.put_dataset(caller.team_id, digest.hexdigest(), iter(lambda: tmp.read(1 << 20), b""))
    # the file name is the client's text: no control characters (PostgreSQL refuses a NUL) and a bounded length
    default_name = _CONTROL.sub("", os.path.basename(source))[:200] or "upload.jsonl"
    ds = ds_store.record_dataset(
        session,
        team_id=caller.team_id,
        name=name or default_name,
        sha256=digest.hexdigest(),
        bytes=size,
        lines=len(examples),
        location=location,
    )
    log.info("dataset %s: %d examples uploaded by team %s", ds.id, len(examples), caller.team_name)
    return _public(ds)


@router.get("", response_model=DatasetList, responses={**E401})
def list_datasets(session: ReadSessionDep, caller: CallerDep) -> DatasetList:
    return DatasetList(items=[_public(d) for d in ds_store.list_datasets(session, team_id=caller.team_id)])
