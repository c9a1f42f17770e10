"""What a job may read (store/refs.py): at submission through the API (SQLite and PostgreSQL, teams red and
blue, real tiny models) and in the trainer process, which turns the refs into local paths for its run.

A refused value gets 422 naming the field, with one message that is the same whether or not the path (or
the other team's dataset, job, checkpoint) exists: a caller cannot probe the file system or other teams."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.service.conftest import auth, tiny_spec

HF_CACHE_MISS = "not in this worker's Hugging Face cache"


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------


def submit(client, key: str, spec: dict):
    return client.post("/v1/jobs", json=spec, headers=auth(key))


def refused(r, field: str) -> str:
    """The message of a 422 whose only field is `field`."""
    assert r.status_code == 422, r.text
    (err,) = r.json()["error"]["fields"]
    assert err["field"] == field, err
    return err["message"]


def assert_same_refusal(client, key: str, field: str, spec_existing: dict, spec_missing: dict) -> str:
    """Both specs are refused on `field` with the identical message; returns it."""
    a = refused(submit(client, key, spec_existing), field)
    b = refused(submit(client, key, spec_missing), field)
    assert a == b
    return a


def jsonl_spec(models: dict[str, Path], path: str) -> dict:
    return tiny_spec(models, task={"name": "jsonl", "path": path})


def team_id(name: str) -> str:
    from store.db import session_scope
    from store.teams import get_or_create_team

    with session_scope() as s:
        return get_or_create_team(s, name=name).id


def store_and_settings():
    from store.results import get_result_store
    from store.settings import get_settings

    settings = get_settings()
    return get_result_store(settings.resolved_result_root), settings


def fake_checkpoint(job_id: str, step: int, model_dir: Path) -> Path:
    """A checkpoint of `job_id` at `step` in the result store (a copy of a tiny HF model directory) and its
    row in the checkpoints table, as the trainer's reporter records one."""
    from store.db import session_scope
    from store.results import record_checkpoint

    store, _ = store_and_settings()
    location = store.checkpoint_location(job_id, step)
    path = store.checkpoint_dir(location)
    shutil.copytree(model_dir, path)
    with session_scope() as s:
        record_checkpoint(
            s, job_id=job_id, step=step, kind="periodic", location=location, bytes=1, sha256="0" * 64, metrics={}
        )
    return path


def upload(client, key: str) -> dict:
    body = b'{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", "answer": "4"}\n'
    r = client.post("/v1/datasets", files={"file": ("sums.jsonl", body)}, headers=auth(key))
    assert r.status_code == 201 or r.status_code == 200, r.text
    return r.json()


def localize(job_id: str) -> dict:
    """What the trainer process runs: the job's resolved spec with every ref turned into a local path."""
    from store import jobs as job_store
    from store import refs
    from store.db import session_scope

    store, settings = store_and_settings()
    with session_scope() as s:
        job = job_store.get_job(s, team_id=None, job_id=job_id)
        return refs.localize_refs(s, team_id=job.team_id, spec=dict(job.spec_resolved), store=store, settings=settings)


@pytest.fixture
def offline_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """`localize_refs` switches the process to HF offline mode (as the trainer process must); undo it after."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "0"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", constants.HF_HUB_OFFLINE)


# ---------------------------------------------------------------------------------------------------------
# Submission: refused, with one message whether or not the thing exists
# ---------------------------------------------------------------------------------------------------------


def test_another_teams_checkpoint_folder_by_path_is_refused(client, keys, micro_models) -> None:
    red_job = submit(client, keys["red"], tiny_spec(micro_models)).json()
    folder = fake_checkpoint(red_job["id"], 2, micro_models["student"])
    missing = folder.with_name("step-999")
    msg = assert_same_refusal(
        client,
        keys["blue"],
        "student",
        tiny_spec(micro_models, student=str(folder)),
        tiny_spec(micro_models, student=str(missing)),
    )
    assert "checkpoint:" in msg and "RLAD_MODEL_ROOTS" in msg and str(folder) not in msg
    # the result store is never readable by path, even by its owner (refs are the way in)
    assert refused(submit(client, keys["red"], tiny_spec(micro_models, student=str(folder))), "student") == msg


def test_another_teams_dataset_file_by_path_is_refused(client, keys, micro_models) -> None:
    from store.datasets import get_dataset
    from store.db import session_scope

    ds = upload(client, keys["red"])
    with session_scope() as s:
        location = get_dataset(s, team_id=None, dataset_id=ds["id"]).location
    store, _ = store_and_settings()
    path = store.dataset_path(location)
    assert path.is_file()
    msg = assert_same_refusal(
        client,
        keys["blue"],
        "task.path",
        jsonl_spec(micro_models, str(path)),
        jsonl_spec(micro_models, str(path.with_name("no-such.jsonl"))),
    )
    assert "dataset:<id>" in msg and "RLAD_MODEL_ROOTS" in msg


def test_etc_passwd_as_a_task_path_is_refused(client, keys, micro_models) -> None:
    assert Path("/etc/passwd").exists() and not Path("/etc/no-such-rlad-file").exists()
    assert_same_refusal(
        client,
        keys["blue"],
        "task.path",
        jsonl_spec(micro_models, "/etc/passwd"),
        jsonl_spec(micro_models, "/etc/no-such-rlad-file"),
    )


def test_a_relative_path_is_refused(client, keys, micro_models) -> None:
    here = Path("tests/service/conftest.py")
    assert here.exists()  # relative to the API's working directory
    assert_same_refusal(
        client,
        keys["red"],
        "task.path",
        jsonl_spec(micro_models, str(here)),
        jsonl_spec(micro_models, "tests/service/no-such.jsonl"),
    )
    # a relative model path (not a Hugging Face org/name) as well
    assert_same_refusal(
        client,
        keys["red"],
        "student",
        tiny_spec(micro_models, student="./tests/service"),
        tiny_spec(micro_models, student="./tests/no-such-dir"),
    )


def test_dot_dot_out_of_a_root_is_refused(client, keys, micro_models, tmp_path_factory) -> None:
    root = tmp_path_factory.getbasetemp()
    assert_same_refusal(
        client,
        keys["red"],
        "student",
        tiny_spec(micro_models, student=f"{root}/../../etc"),
        tiny_spec(micro_models, student=f"{root}/../../no-such-rlad-dir"),
    )
    # `..` that would stay inside the root is refused too: no path tricks at all
    inside = f"{micro_models['student']}/../student"
    assert refused(submit(client, keys["red"], tiny_spec(micro_models, student=inside)), "student")


def test_a_symlink_inside_a_root_pointing_outside_is_refused(client, keys, micro_models, tmp_path) -> None:
    (tmp_path / "to-etc").symlink_to("/etc")
    (tmp_path / "dangling").symlink_to("/no-such-rlad-dir")
    msg = assert_same_refusal(
        client,
        keys["red"],
        "student",
        tiny_spec(micro_models, student=str(tmp_path / "to-etc")),
        tiny_spec(micro_models, student=str(tmp_path / "dangling")),
    )
    # nor into the result store, which lies inside the same temporary tree
    store, _ = store_and_settings()
    store.root.mkdir(parents=True, exist_ok=True)
    (tmp_path / "to-results").symlink_to(store.root)
    r = submit(client, keys["red"], tiny_spec(micro_models, student=str(tmp_path / "to-results")))
    assert refused(r, "student") == msg


def test_another_teams_checkpoint_ref_is_refused(client, keys, micro_models) -> None:
    red_job = submit(client, keys["red"], tiny_spec(micro_models)).json()
    fake_checkpoint(red_job["id"], 2, micro_models["student"])
    for ref in (f"checkpoint:{red_job['id']}", f"checkpoint:{red_job['id']}/2"):
        msg = assert_same_refusal(
            client,
            keys["blue"],
            "teacher",
            tiny_spec(micro_models, teacher=ref),
            tiny_spec(micro_models, teacher="checkpoint:job-no-such-job/2"),
        )
        assert red_job["id"] not in msg and "checkpoint:<job id>" in msg


def test_another_teams_dataset_ref_is_refused(client, keys, micro_models) -> None:
    ds = upload(client, keys["red"])
    msg = assert_same_refusal(
        client,
        keys["blue"],
        "task.path",
        jsonl_spec(micro_models, ds["task_path"]),
        jsonl_spec(micro_models, "dataset:ds-no-such-dataset"),
    )
    assert ds["id"] not in msg and "POST /v1/datasets" in msg
    assert submit(client, keys["red"], jsonl_spec(micro_models, ds["task_path"])).status_code == 202


def test_refs_in_the_wrong_field_are_refused(client, keys, micro_models) -> None:
    ds = upload(client, keys["red"])
    assert "not a model" in refused(
        submit(client, keys["red"], tiny_spec(micro_models, student=ds["task_path"])), "student"
    )
    job = submit(client, keys["red"], tiny_spec(micro_models)).json()
    fake_checkpoint(job["id"], 2, micro_models["student"])
    r = submit(client, keys["red"], jsonl_spec(micro_models, f"checkpoint:{job['id']}"))
    assert "not a dataset" in refused(r, "task.path")


# ---------------------------------------------------------------------------------------------------------
# Submission: accepted, and kept as written
# ---------------------------------------------------------------------------------------------------------


def test_a_path_inside_the_root_is_accepted(client, keys, micro_models) -> None:
    r = submit(client, keys["blue"], tiny_spec(micro_models))
    assert r.status_code == 202, r.text
    assert r.json()["spec_resolved"]["student"] == str(micro_models["student"])


def test_own_checkpoint_refs_are_accepted_once_the_checkpoint_exists(client, keys, micro_models) -> None:
    job = submit(client, keys["red"], tiny_spec(micro_models)).json()
    r = submit(client, keys["red"], tiny_spec(micro_models, student=f"checkpoint:{job['id']}"))
    assert refused(r, "student")  # no checkpoint saved yet
    fake_checkpoint(job["id"], 2, micro_models["student"])
    assert refused(submit(client, keys["red"], tiny_spec(micro_models, student=f"checkpoint:{job['id']}/3")), "student")
    for ref in (f"checkpoint:{job['id']}/2", f"checkpoint:{job['id']}"):
        r = submit(client, keys["red"], tiny_spec(micro_models, student=ref, reference=ref))
        assert r.status_code == 202, r.text
        assert r.json()["spec_resolved"]["student"] == ref == r.json()["spec_resolved"]["reference"]  # portable


def test_a_hugging_face_id_is_accepted_and_malformed_ones_are_not(client, keys, micro_models) -> None:
    for hf_id in ("HuggingFaceTB/SmolLM2-135M-Instruct", "gpt2", "org_1/name.v2"):
        assert submit(client, keys["red"], tiny_spec(micro_models, student=hf_id)).status_code == 202, hf_id
    for bad in ("org/../name", ".hidden/model", "-rf/model", "a/b/c", "org/name:tag", "~/models/x"):
        assert refused(submit(client, keys["red"], tiny_spec(micro_models, student=bad)), "student"), bad


# ---------------------------------------------------------------------------------------------------------
# The trainer process: refs -> local paths, checked again
# ---------------------------------------------------------------------------------------------------------


def test_localize_turns_refs_into_result_store_paths(client, keys, micro_models, offline_restored) -> None:
    job = submit(client, keys["red"], tiny_spec(micro_models)).json()
    step2 = fake_checkpoint(job["id"], 2, micro_models["student"])
    step4 = fake_checkpoint(job["id"], 4, micro_models["student"])
    ds = upload(client, keys["red"])
    spec = tiny_spec(
        micro_models,
        student=f"checkpoint:{job['id']}/2",
        reference=f"checkpoint:{job['id']}",
        task={"name": "jsonl", "path": ds["task_path"]},
    )
    new = submit(client, keys["red"], spec).json()
    local = localize(new["id"])
    assert local["student"] == str(step2) and local["reference"] == str(step4)  # no step: the newest
    assert local["teacher"] == os.path.realpath(micro_models["teacher"])
    assert Path(local["task"]["path"]).read_bytes().startswith(b'{"prompt": "1+1="')
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_localize_refuses_a_symlink_swapped_after_submission(
    client, keys, micro_models, tmp_path, offline_restored
) -> None:
    from rlad_core.config import ConfigError

    link = tmp_path / "current-student"
    link.symlink_to(micro_models["student"])
    job = submit(client, keys["red"], tiny_spec(micro_models, student=str(link))).json()
    assert localize(job["id"])["student"] == os.path.realpath(micro_models["student"])
    store, _ = store_and_settings()
    for target in ("/etc", store.root):  # outside the roots; the result store inside them
        link.unlink()
        link.symlink_to(target)
        with pytest.raises(ConfigError) as exc:
            localize(job["id"])
        assert exc.value.errors[0][0] == "student" and "RLAD_MODEL_ROOTS" in exc.value.errors[0][1]


def test_localize_an_uncached_hugging_face_id_fails_at_once_offline(
    client, keys, micro_models, offline_restored
) -> None:
    job = submit(client, keys["red"], tiny_spec(micro_models, teacher="rlad-test/not-cached-anywhere")).json()
    t0 = time.monotonic()
    with pytest.raises(FileNotFoundError, match=HF_CACHE_MISS) as exc:
        localize(job["id"])
    assert time.monotonic() - t0 < 5 and "rlad-test/not-cached-anywhere" in str(exc.value)


def test_localize_a_cached_hugging_face_id_is_its_snapshot(
    client, keys, micro_models, tmp_path, monkeypatch, offline_restored
) -> None:
    from huggingface_hub import constants

    repo = tmp_path / "hf-cache" / "models--rlad-test--micro"
    shutil.copytree(micro_models["student"], repo / "snapshots" / ("a" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    job = submit(client, keys["red"], tiny_spec(micro_models, student="rlad-test/micro")).json()
    assert localize(job["id"])["student"] == str(repo / "snapshots" / ("a" * 40))


def test_localize_rechecks_the_owner_of_a_checkpoint(client, keys, micro_models, offline_restored) -> None:
    from store.db import session_scope
    from store.models import Job

    job = submit(client, keys["red"], tiny_spec(micro_models)).json()
    fake_checkpoint(job["id"], 2, micro_models["student"])
    new = submit(client, keys["red"], tiny_spec(micro_models, student=f"checkpoint:{job['id']}")).json()
    with session_scope() as s:  # the source job changed hands since submission (say, a team merge undone)
        s.get(Job, job["id"]).team_id = team_id("blue")
    with pytest.raises(FileNotFoundError, match="no checkpoint of your team's jobs"):
        localize(new["id"])


# ---------------------------------------------------------------------------------------------------------
# End to end in-process: claim, run the trainer process's `run`, see the outcome
# ---------------------------------------------------------------------------------------------------------


def _claim_and_run(job_id: str) -> tuple[int, object]:
    import signal

    from store import jobs as job_store
    from store.db import session_scope
    from workers.trainer_process import run

    with session_scope() as s:
        attempt = job_store.claim_job(s, job_id=job_id, worker="test").attempt
    handler = signal.getsignal(signal.SIGTERM)
    try:
        rc = run(job_id, attempt)  # sets a SIGTERM handler, as the trainer process does
    finally:
        signal.signal(signal.SIGTERM, handler)
    with session_scope() as s:
        job = job_store.get_job(s, team_id=None, job_id=job_id)
        return rc, (job.status.value, job.error_code, job.error_message)


def test_a_job_trains_from_its_teams_previous_checkpoint(client, keys, micro_models, offline_restored) -> None:
    first = submit(client, keys["red"], tiny_spec(micro_models)).json()
    fake_checkpoint(first["id"], 4, micro_models["student"])  # as if the first job had run
    spec = tiny_spec(micro_models, student=f"checkpoint:{first['id']}", steps=2, eval_every=0, checkpoint_every=2)
    job = submit(client, keys["red"], spec).json()
    rc, (status, code, message) = _claim_and_run(job["id"])
    assert (rc, status) == (0, "succeeded"), message
    (ckpt,) = client.get(f"/v1/jobs/{job['id']}/checkpoints", headers=auth(keys["red"])).json()["items"]
    assert ckpt["step"] == 2


def test_a_job_whose_model_is_not_cached_fails_not_found_without_retry(
    client, keys, micro_models, offline_restored
) -> None:
    job = submit(client, keys["red"], tiny_spec(micro_models, student="rlad-test/not-cached-anywhere")).json()
    rc, (status, code, message) = _claim_and_run(job["id"])
    assert (rc, status, code) == (1, "failed", "not_found") and HF_CACHE_MISS in message


def test_a_missing_path_under_the_root_fails_the_job_not_found(
    client, keys, micro_models, tmp_path, offline_restored
) -> None:
    job = submit(client, keys["red"], tiny_spec(micro_models, student=str(tmp_path / "no-such-model"))).json()
    rc, (status, code, message) = _claim_and_run(job["id"])
    assert (rc, status, code) == (1, "failed", "not_found") and "no-such-model" in message
