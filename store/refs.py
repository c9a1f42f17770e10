"""What a job may read: the one rule for the models and the dataset a job spec names.

The fields are `student`, `teacher`, `reference` (a model: a directory or a Hugging Face id) and, for a
`jsonl` task, `task.path` (a file). A value is accepted only as

    dataset:<id>                 task.path only: a dataset the team uploaded (POST /v1/datasets)
    checkpoint:<job>[/<step>]    models only: a checkpoint of one of the team's jobs (the newest without a step)
    org/name or name             models only: a Hugging Face id, read from the workers' local cache (offline)
    /an/absolute/path            under a directory of `Settings.model_roots` (RLAD_MODEL_ROOTS) once every
                                 symlink is resolved, and never inside the result store or the data directory

Everything else is refused with one message per field that does not depend on what exists on disk, so a
caller cannot probe the file system. Submission checks the refs (`check_refs`) and keeps them as written;
the trainer process turns them into local paths for its run (`localize_refs`), checking again: ownership,
and a symlink that may have changed since the job was submitted.
"""

from __future__ import annotations

import os
import re
from typing import Any

from sqlalchemy.orm import Session

from rlad_core.config import ConfigError
from store import datasets as ds_store
from store.errors import InvalidSpec, NotFound
from store.models import Job
from store.results import ResultStore, get_checkpoint
from store.settings import Settings

DATASET_SCHEME = "dataset:"
CHECKPOINT_SCHEME = "checkpoint:"
MODEL_FIELDS = ("student", "teacher", "reference")
TASK_PATH = "task.path"

# Hugging Face repo ids: `name` or `org/name`; letters, digits, - _ . (no leading '.' or '-', no '..', <= 96 each)
_HF_PART = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}"
HF_ID = re.compile(rf"(?:{_HF_PART}/)?{_HF_PART}")
_CHECKPOINT_REF = re.compile(r"(?P<job>[A-Za-z0-9_-]{1,64})(?:/(?P<step>[0-9]{1,9}))?")

MODEL_PATH_REFUSED = (
    "this path may not be read by jobs; fix: name the model as checkpoint:<job id> or "
    "checkpoint:<job id>/<step> (a checkpoint of one of your jobs), as a Hugging Face id "
    "(org/name), or as an absolute path under a directory listed in the service's "
    "RLAD_MODEL_ROOTS setting"
)
DATASET_PATH_REFUSED = (
    "this path may not be read by jobs; fix: upload the file with POST /v1/datasets (`rlad "
    "datasets upload`) and use the dataset:<id> it returns, or use an absolute path under a "
    "directory listed in the service's RLAD_MODEL_ROOTS setting"
)
NO_DATASET = (
    "no dataset uploaded by your team has this id; fix: upload it with POST /v1/datasets (`rlad datasets "
    "upload`) and use the task_path it returns, dataset:<id>"
)
NO_CHECKPOINT = (
    "no checkpoint of your team's jobs matches this ref; fix: use checkpoint:<job id> (its newest "
    "checkpoint) or checkpoint:<job id>/<step> of one of your jobs that saved one (GET "
    "/v1/jobs/<id>/checkpoints lists them)"
)
DATASET_AS_MODEL = (
    "dataset:<id> names a JSONL dataset, not a model; fix: use checkpoint:<job id>[/<step>], a "
    "Hugging Face id or an absolute path under RLAD_MODEL_ROOTS"
)
CHECKPOINT_AS_DATASET = (
    "checkpoint:<job id> names a model, not a dataset; fix: upload the JSONL file with POST "
    "/v1/datasets and use dataset:<id>"
)


class _Refused(Exception):
    """One value of the spec that a job may not read: (field, message with the fix)."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


def _refs(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, value) of every model and dataset the spec names."""
    refs = [(f, spec[f]) for f in MODEL_FIELDS if spec.get(f)]
    task = spec.get("task") or {}
    if task.get("name") == "jsonl" and task.get("path"):
        refs.append((TASK_PATH, task["path"]))
    return refs


# ---------------------------------------------------------------------------------------------------------
# Absolute paths
# ---------------------------------------------------------------------------------------------------------


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def readable_path(value: str, settings: Settings) -> str | None:
    """The real path of `value` if a job may read it, else None.

    The roots are checked on the path as written before the file system is asked anything, and again on
    the real path (`os.path.realpath`: every symlink resolved), so a link inside a root cannot lead out of it
    and the answer for a path outside the roots is the same whether or not it exists."""
    if not value.startswith("/") or "\x00" in value or ".." in value.split("/"):
        return None
    roots = [os.path.abspath(r) for r in settings.model_roots]
    real_roots = [os.path.realpath(r) for r in roots]
    closed = [os.path.realpath(settings.resolved_result_root), os.path.realpath(settings.data_dir)]
    written = os.path.normpath(value)
    if not any(_inside(written, r) for r in roots + real_roots) or any(_inside(written, c) for c in closed):
        return None
    real = os.path.realpath(written)
    if not any(_inside(real, r) for r in real_roots) or any(_inside(real, c) for c in closed):
        return None
    return real


def _path_refused(field: str) -> _Refused:
    return _Refused(field, DATASET_PATH_REFUSED if field == TASK_PATH else MODEL_PATH_REFUSED)


# ---------------------------------------------------------------------------------------------------------
# The team's own datasets and checkpoints
# ---------------------------------------------------------------------------------------------------------


def _own_dataset_location(session: Session, team_id: str, value: str) -> str:
    ds = ds_store.get_dataset(session, team_id=team_id, dataset_id=value.removeprefix(DATASET_SCHEME))
    if ds is None:
        raise _Refused(TASK_PATH, NO_DATASET)
    return ds.location


def _own_checkpoint_location(session: Session, team_id: str, field: str, value: str) -> str:
    m = _CHECKPOINT_REF.fullmatch(value.removeprefix(CHECKPOINT_SCHEME))
    if m is None:
        raise _Refused(field, NO_CHECKPOINT)
    job = session.get(Job, m["job"])
    if job is None or job.team_id != team_id:  # another team's job does not exist for this one
        raise _Refused(field, NO_CHECKPOINT)
    try:
        ckpt = get_checkpoint(session, job_id=job.id, step=int(m["step"]) if m["step"] else None)
    except NotFound:
        raise _Refused(field, NO_CHECKPOINT) from None
    return ckpt.location


def _check(session: Session, team_id: str, field: str, value: str, settings: Settings) -> None:
    if field == TASK_PATH:
        if value.startswith(DATASET_SCHEME):
            _own_dataset_location(session, team_id, value)
        elif value.startswith(CHECKPOINT_SCHEME):
            raise _Refused(field, CHECKPOINT_AS_DATASET)
        elif readable_path(value, settings) is None:
            raise _path_refused(field)
    elif value.startswith(CHECKPOINT_SCHEME):
        _own_checkpoint_location(session, team_id, field, value)
    elif value.startswith(DATASET_SCHEME):
        raise _Refused(field, DATASET_AS_MODEL)
    elif not HF_ID.fullmatch(value) or ".." in value:
        if readable_path(value, settings) is None:
            raise _path_refused(field)


def check_refs(session: Session, *, team_id: str, spec: dict[str, Any], settings: Settings) -> None:
    """At submission: every model and dataset of `spec` must be one the team's job may read.
    Raises `InvalidSpec` with one (field, message) per refused value."""
    errors = []
    for field, value in _refs(spec):
        try:
            _check(session, team_id, field, value, settings)
        except _Refused as exc:
            errors.append((exc.field, exc.message))
    if errors:
        raise InvalidSpec(errors)


# ---------------------------------------------------------------------------------------------------------
# In the trainer process: refs -> local paths
# ---------------------------------------------------------------------------------------------------------


def go_offline() -> None:
    """The workers have no network: a Hugging Face lookup must fail at once, not time out for a minute."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True  # read at import; the trainer process imported it already


def hf_cache_dir(repo_id: str) -> str:
    """The local snapshot directory of a Hugging Face model, from the cache only (never the network)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise FileNotFoundError(
            f"model {repo_id!r} is not in this worker's Hugging Face cache (the workers are offline); fix: download "
            f"it into the workers' cache (HF_HOME) on a machine that is online, e.g. `hf download {repo_id}`, or put "
            "the model directory under a directory in RLAD_MODEL_ROOTS and name it by its absolute path"
        ) from None


def _local(session: Session, team_id: str, field: str, value: str, store: ResultStore, settings: Settings) -> str:
    if field == TASK_PATH and value.startswith(DATASET_SCHEME):
        try:
            location = _own_dataset_location(session, team_id, value)
        except _Refused as exc:  # it was the team's at submission: deleted since
            raise FileNotFoundError(f"{field}: {exc.message}") from None
        return str(store.dataset_path(location))
    if field != TASK_PATH and value.startswith(CHECKPOINT_SCHEME):
        try:
            location = _own_checkpoint_location(session, team_id, field, value)
        except _Refused as exc:
            raise FileNotFoundError(f"{field}: {exc.message}") from None
        path = store.checkpoint_dir(location)
        if not path.is_dir():
            raise FileNotFoundError(
                f"{field}: {value} is recorded but its directory is missing from the result store; "
                "fix: use another checkpoint of that job"
            )
        return str(path)
    if field != TASK_PATH and not value.startswith(DATASET_SCHEME) and HF_ID.fullmatch(value) and ".." not in value:
        return hf_cache_dir(value)
    real = readable_path(value, settings)
    if real is None:
        refused = _path_refused(field)
        raise ConfigError([(refused.field, refused.message)])
    if not os.path.exists(real):  # under the roots: saying so reveals nothing the team may not read
        raise FileNotFoundError(
            f"{field}: {value} does not exist on this worker; fix: put it there (the workers "
            "must see the same paths under RLAD_MODEL_ROOTS) or name another one"
        )
    return real


def localize_refs(
    session: Session, *, team_id: str, spec: dict[str, Any], store: ResultStore, settings: Settings
) -> dict[str, Any]:
    """A copy of the resolved `spec` whose models and dataset are local paths for this run: dataset:<id> ->
    the uploaded file, checkpoint:<job>[/<step>] -> the checkpoint directory in the result store (still a
    job of the team), an absolute path -> its real path (checked against the roots again: a symlink may have
    changed since submission), a Hugging Face id -> its snapshot in the local cache (offline).

    Raises `ConfigError` for a path a job may not read, `FileNotFoundError` for a ref or model that is not
    there (both fail the job at once: retrying cannot fix them)."""
    go_offline()
    out = {**spec, "task": dict(spec.get("task") or {})}
    for field, value in _refs(spec):
        local = _local(session, team_id, field, value, store, settings)
        if field == TASK_PATH:
            out["task"]["path"] = local
        else:
            out[field] = local
    return out
