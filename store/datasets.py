"""Uploaded JSONL datasets (validated by the API before they are recorded; stored once per team and sha256)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import Dataset


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
