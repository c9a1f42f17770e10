"""Uploaded JSONL datasets: read in chunks up to the size limit, validated line by line, stored once per team and
sha256 in the result store, recorded here."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from rlad_core.tasks.jsonl import DatasetError, validate_jsonl_lines
from store import usage
from store.errors import InvalidDataset, TooLarge
from store.models import Dataset
from store.results import ResultStore

CHUNK = 1 << 20
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def ingest_dataset(
    session: Session,
    *,
    team_id: str,
    upload: BinaryIO,
    filename: str | None,
    name: str | None,
    store: ResultStore,
    max_bytes: int,
    storage_limit: int = 0,
) -> Dataset:
    """Read `upload` in chunks (more than `max_bytes`: `TooLarge`), validate every line (`InvalidDataset` naming
    the first bad one), store the bytes in the result store and record the dataset (the team's existing row when
    the same bytes came before). `name` defaults to the file's name. New bytes that would take the team's storage
    over `storage_limit` (0: none) raise `QuotaExceeded` before anything is stored."""
    digest, size = hashlib.sha256(), 0
    source = filename or "upload.jsonl"
    with tempfile.TemporaryFile() as tmp:
        while chunk := upload.read(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise TooLarge(
                    f"the upload is larger than {max_bytes} bytes; fix: split the dataset or raise "
                    "RLAD_MAX_UPLOAD_BYTES on the server"
                )
            digest.update(chunk)
            tmp.write(chunk)
        tmp.seek(0)
        try:
            examples = validate_jsonl_lines(tmp, source=source)
        except DatasetError as exc:
            raise InvalidDataset(str(exc), line=exc.line) from None
        same = session.scalar(select(Dataset).where(Dataset.team_id == team_id, Dataset.sha256 == digest.hexdigest()))
        if same is None:
            usage.check_storage(session, team_id=team_id, limit=storage_limit, adding=size)
        tmp.seek(0)
        location = store.put_dataset(team_id, digest.hexdigest(), iter(lambda: tmp.read(CHUNK), b""))
    # the file name is the client's text: no control characters (PostgreSQL refuses a NUL) and a bounded length
    default_name = _CONTROL.sub("", os.path.basename(source))[:200] or "upload.jsonl"
    return record_dataset(
        session,
        team_id=team_id,
        name=name or default_name,
        sha256=digest.hexdigest(),
        bytes=size,
        lines=len(examples),
        location=location,
    )


def record_dataset(
    session: Session, *, team_id: str, name: str, sha256: str, bytes: int, lines: int, location: str
) -> Dataset:
    """The team's dataset with this content: the existing row when the same bytes were uploaded before."""
    existing = session.scalar(select(Dataset).where(Dataset.team_id == team_id, Dataset.sha256 == sha256))
    if existing is not None:
        return existing
    ds = Dataset(team_id=team_id, name=name, sha256=sha256, bytes=bytes, lines=lines, location=location)
    with session.begin_nested():
        session.add(ds)
    return ds


def list_datasets(session: Session, *, team_id: str) -> list[Dataset]:
    return list(session.scalars(select(Dataset).where(Dataset.team_id == team_id).order_by(Dataset.id.desc())))


def get_dataset(session: Session, *, team_id: str | None, dataset_id: str) -> Dataset | None:
    ds = session.get(Dataset, dataset_id)
    return ds if ds is not None and (team_id is None or ds.team_id == team_id) else None
