"""The Python client and the service commands of the CLI against one real local service (API + Celery
workers, SQLite, filesystem broker) training real tiny models."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import socket
import tarfile

import httpx
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from rlad.cli import app
from rlad.client import ApiError, ChecksumError, Client, RladError, ServiceUnavailable, verify_checkpoint_dir
from rlad.service import LocalService
from rlad_core.models import save_tiny_model

runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("svc")
    # the tiny models live under pytest's temporary tree: jobs may read them there (not the result store)
    svc = LocalService(
        root / "data", port=_free_port(), env={"RLAD_MODEL_ROOTS": json.dumps([str(tmp_path_factory.getbasetemp())])}
    )
    try:
        svc.start(timeout_s=120)
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    return {
        "student": str(save_tiny_model(root / "student", "micro", seed=0)),
        "teacher": str(save_tiny_model(root / "teacher", "micro", seed=1)),
    }


def _spec(models: dict[str, str], **kw) -> dict:
    return {
        "student": models["student"],
        "teacher": models["teacher"],
        "steps": 4,
        "batch_size": 8,
        "group_size": 4,
        "max_new_tokens": 8,
        "eval_every": 2,
        "eval_size": 8,
        "checkpoint_every": 2,
        "lr": 1e-3,
        "task": {"name": "arithmetic", "levels": [1]},
        **kw,
    }


@pytest.fixture(scope="module")
def client(service):
    with Client(service.base_url, service.api_key, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def finished_job(client, models) -> dict:
    """One RLAD job submitted with the client and followed to its end."""
    job = client.submit(_spec(models, name="client-job"), idempotency_key="client-job-1")
    assert job["status"] == "queued" and job["total_steps"] == 4
    again = client.submit(_spec(models, name="client-job"), idempotency_key="client-job-1")
    assert again["id"] == job["id"]  # same key, same spec: the same job
    seen: list[tuple[str, int]] = []
    final = client.wait(
        job["id"], poll_s=0.3, on_update=lambda j: seen.append((j["status"], j["steps_done"])), timeout_s=240
    )
    assert final["status"] == "succeeded", final
    final["_seen"] = seen
    return final


@pytest.fixture(scope="module")
def cli_env(service) -> dict[str, str]:
    return {"RLAD_URL": service.base_url, "RLAD_API_KEY": service.api_key}


def test_client_runs_a_job_and_downloads_a_loadable_verified_checkpoint(client, finished_job, tmp_path):
    job_id = finished_job["id"]
    assert finished_job["is_terminal"] and finished_job["steps_done"] == 4
    assert finished_job["_seen"][-1] == ("succeeded", 4)
    steps_seen = [s for _, s in finished_job["_seen"]]
    assert steps_seen == sorted(steps_seen)  # progress never goes backwards

    metrics = client.metrics(job_id, keys=["reward_mean", "eval/accuracy"])
    by_key = {s["key"]: s for s in metrics["series"]}
    assert by_key["reward_mean"]["steps"] == [1, 2, 3, 4]
    assert 2 in by_key["eval/accuracy"]["steps"] and 4 in by_key["eval/accuracy"]["steps"]
    assert set(client.latest_metrics(job_id, ["reward_mean"])) == {"reward_mean"}

    ckpts = client.checkpoints(job_id)
    assert [c["step"] for c in ckpts] == [2, 4] and ckpts[-1]["kind"] == "final"
    detail = client.checkpoint(job_id, 4)
    listed = {f["name"]: f for f in detail["files"]}
    assert {"model.safetensors", "config.json", "manifest.json"} <= set(listed)

    progress: list[tuple[int, int]] = []
    path = client.download(job_id, out_dir=tmp_path / "dl", on_progress=lambda d, t: progress.append((d, t)))
    assert path == tmp_path / "dl" / f"{job_id}-step-4"  # no step given: the latest
    assert progress[-1][0] == progress[-1][1] > sum(f["bytes"] for f in detail["files"])  # tar headers on top
    assert [p.name for p in (tmp_path / "dl").iterdir()] == [path.name]  # no temp dirs left behind
    manifest = verify_checkpoint_dir(path, manifest_sha256=detail["sha256"])
    assert set(manifest["files"]) | {"manifest.json"} == set(listed)

    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok("1+1=", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]

    # an earlier step, into the same directory: a second checkpoint beside the first
    older = client.download(job_id, step=2, out_dir=tmp_path / "dl")
    assert older.name == f"{job_id}-step-2" and verify_checkpoint_dir(older)["step"] == 2

    # tampering: one flipped byte in a weight file, or a manifest that is not the published one
    bad = tmp_path / "tampered"
    shutil.copytree(path, bad)
    weights = bad / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="model.safetensors"):
        verify_checkpoint_dir(bad)
    with pytest.raises(ChecksumError, match="manifest.json"):
        verify_checkpoint_dir(path, manifest_sha256="0" * 64)
    (bad / "config.json").unlink()
    with pytest.raises(ChecksumError, match="missing"):
        verify_checkpoint_dir(bad)


def test_client_errors_are_typed(client, models, service):
    with pytest.raises(ApiError) as missing:
        client.get_job("no-such-job")
    assert missing.value.status == 404 and missing.value.code == "not_found"
    with pytest.raises(ApiError) as invalid:
        client.submit(_spec(models, steps=0))
    assert invalid.value.status == 422 and "steps" in [f.field for f in invalid.value.fields]
    with pytest.raises(ApiError) as unauthorized, Client(service.base_url, "rlad_wrong") as wrong:
        wrong.list_jobs()
    assert unauthorized.value.status == 401
    with pytest.raises(ServiceUnavailable, match=r"127\.0\.0\.1:1\b.*rlad up"), Client("http://127.0.0.1:1", "k") as c:
        c.get_job("x")


def _tar_response(entries: dict[str, bytes], manifest_sha: str) -> httpx.MockTransport:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    body = buf.getvalue()
    return httpx.MockTransport(
        lambda req: httpx.Response(
            200, content=body, headers={"Content-Length": str(len(body)), "X-Checkpoint-Sha256": manifest_sha}
        )
    )


def test_download_rejects_tampered_or_unsafe_archives_and_leaves_nothing(tmp_path):
    files = {"config.json": b'{"a": 1}', "model.safetensors": b"weights" * 100}
    manifest = json.dumps(
        {"step": 3, "files": {n: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)} for n, d in files.items()}}
    ).encode()
    sha = hashlib.sha256(manifest).hexdigest()
    entries = {f"job_x-step-3/{n}": d for n, d in {**files, "manifest.json": manifest}.items()}
    out = tmp_path / "out"

    with Client("http://rlad.test", "k", transport=_tar_response(entries, sha)) as c:
        path = c.download("job_x", step=3, out_dir=out)
    assert path == out / "job_x-step-3" and (path / "model.safetensors").read_bytes() == files["model.safetensors"]
    shutil.rmtree(out)

    cases = {
        "model.safetensors": {**entries, "job_x-step-3/model.safetensors": b"weightz" * 100},  # a changed byte
        "unsafe path": {**entries, "job_x-step-3/../../evil": b"x"},
        "not under": {**entries, "elsewhere/evil": b"x"},
        "does not list": {**entries, "job_x-step-3/extra.bin": b"x"},
    }
    for match, tampered in cases.items():
        with (
            Client("http://rlad.test", "k", transport=_tar_response(tampered, sha)) as c,
            pytest.raises(ChecksumError, match=match),
        ):
            c.download("job_x", step=3, out_dir=out)
        assert list(out.iterdir()) == []  # no checkpoint, no temp dir: a failed download leaves nothing
    assert not (tmp_path / "evil").exists() and not (out.parent.parent / "evil").exists()
    # a manifest that is not the one the API published
    with (
        Client("http://rlad.test", "k", transport=_tar_response(entries, "0" * 64)) as c,
        pytest.raises(ChecksumError, match="published"),
    ):
        c.download("job_x", step=3, out_dir=out)


def test_from_env_reads_the_key_file_rlad_up_writes(service, monkeypatch, tmp_path):
    monkeypatch.setenv("RLAD_URL", service.base_url)
    monkeypatch.delenv("RLAD_API_KEY", raising=False)
    monkeypatch.setenv("RLAD_DATA_DIR", str(service.data_dir))  # holds api_key, as `rlad up` leaves it
    with Client.from_env() as c:
        assert c.list_jobs(limit=1)["items"] is not None
    monkeypatch.setenv("RLAD_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(RladError, match="RLAD_API_KEY"):
        Client.from_env()


def test_cli_submit_wait_status_list_events_download(cli_env, models, tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(_spec(models, steps=3, name="cli-job")))
    # --set overrides the YAML (steps 3 -> 2; a dotted one too)
    result = runner.invoke(
        app,
        ["submit", str(spec), "--set", "steps=2", "--set", "task.levels=[1]", "--wait", "--poll", "0.3"],
        env=cli_env,
    )
    assert result.exit_code == 0, result.output
    job_id = result.stdout.strip().splitlines()[0]
    assert job_id and "succeeded" in result.output and "Traceback" not in result.output

    status = runner.invoke(app, ["status", job_id], env=cli_env)
    assert status.exit_code == 0, status.output
    assert "succeeded" in status.output and "2/2" in status.output and "cli-job" in status.output
    as_json = runner.invoke(app, ["status", job_id, "--json"], env=cli_env)
    assert json.loads(as_json.stdout)["spec"]["steps"] == 2

    listed = runner.invoke(app, ["list", "--status", "succeeded", "--limit", "10", "--json"], env=cli_env)
    assert listed.exit_code == 0, listed.output
    assert job_id in [j["id"] for j in json.loads(listed.stdout)["items"]]
    table = runner.invoke(app, ["list", "--method", "rlad"], env=cli_env)
    assert table.exit_code == 0 and job_id in table.output
    none = runner.invoke(app, ["list", "--method", "grpo", "--json"], env=cli_env)
    assert json.loads(none.stdout)["items"] == []

    evs = runner.invoke(app, ["events", job_id, "--follow"], env=cli_env)
    assert evs.exit_code == 0, evs.output
    kinds = [line.split()[3] for line in evs.stdout.splitlines() if line.strip()]
    assert kinds[0] == "queued" and kinds[-1] == "succeeded"
    assert {"started", "checkpoint_saved", "eval_completed"} <= set(kinds)

    out = tmp_path / "ckpt"
    dl = runner.invoke(app, ["download", job_id, "-o", str(out)], env=cli_env)
    assert dl.exit_code == 0, dl.output
    assert "sha256 verified" in dl.output
    path = out / f"{job_id}-step-2"
    assert str(path) in "".join(dl.stdout.split()) and (path / "model.safetensors").is_file()
    verify_checkpoint_dir(path)

    cancelled = runner.invoke(app, ["cancel", job_id], env=cli_env)  # terminal: unchanged
    assert cancelled.exit_code == 0 and "succeeded" in cancelled.output


def test_cli_errors_exit_codes_without_traceback(cli_env, models, tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(_spec(models, steps=0)))
    bad = runner.invoke(app, ["submit", str(spec)], env=cli_env)
    assert bad.exit_code == 2, bad.output
    assert "steps" in bad.output and "422" in bad.output and "Traceback" not in bad.output
    # a job that fails while it runs (no such student model): exit 1, with the job's error
    spec.write_text(yaml.safe_dump(_spec(models, student=str(tmp_path / "no-such-model"))))
    failed = runner.invoke(app, ["submit", str(spec), "--wait", "--poll", "0.3"], env=cli_env)
    assert failed.exit_code == 1, failed.output
    text = "".join(failed.output.split())  # rich wraps long lines
    assert "failed" in text and "no-such-model" in text and "Traceback" not in text
    missing = runner.invoke(app, ["status", "no-such-job"], env=cli_env)
    assert missing.exit_code == 2 and "404" in missing.output
    down = runner.invoke(app, ["list"], env={"RLAD_URL": "http://127.0.0.1:1", "RLAD_API_KEY": "k"})
    assert down.exit_code == 1 and "rlad up" in down.output and "Traceback" not in down.output
    no_ckpt = runner.invoke(app, ["download", "no-such-job", "-o", str(tmp_path / "x")], env=cli_env)
    assert no_ckpt.exit_code == 2 and not (tmp_path / "x").exists()


def test_cli_keys_and_datasets(service, cli_env, tmp_path, monkeypatch):
    from store.db import reset_caches

    # a second team's key, minted straight into the service's database: it sees none of the first team's jobs
    monkeypatch.setenv("RLAD_DATA_DIR", str(service.data_dir))
    reset_caches()
    try:
        made = runner.invoke(app, ["keys", "create", "--team", "other-team"])
    finally:
        reset_caches()
    assert made.exit_code == 0, made.output
    key = made.stdout.strip()
    assert key.startswith("rlad_")
    other = {"RLAD_URL": service.base_url, "RLAD_API_KEY": key}
    listed = runner.invoke(app, ["list", "--json"], env=other)
    assert listed.exit_code == 0 and json.loads(listed.stdout)["items"] == []

    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n" for i in range(5)))
    up = runner.invoke(app, ["datasets", "upload", str(data), "--name", "plus-one"], env=cli_env)
    assert up.exit_code == 0, up.output
    assert "5 examples" in up.output and "dataset:" in up.output
    ls = runner.invoke(app, ["datasets", "list"], env=cli_env)
    assert ls.exit_code == 0 and "plus-one" in ls.output
    assert runner.invoke(app, ["datasets", "list"], env=other).output.count("plus-one") == 0

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "1+1=", "answer": "2"}\nnot json\n')
    bad = runner.invoke(app, ["datasets", "upload", str(broken)], env=cli_env)
    assert bad.exit_code == 2 and "line 2" in bad.output


def test_cli_keys_new_list_rotate_revoke_and_audit(service, cli_env):
    # rlad up's key is the team's admin key: it mints, lists, rotates and revokes the team's keys
    made = runner.invoke(
        app, ["keys", "new", "--role", "read", "--name", "grafana", "--expires-days", "30"], env=cli_env
    )
    assert made.exit_code == 0, made.output
    read_key = made.stdout.strip()
    reader = {"RLAD_URL": service.base_url, "RLAD_API_KEY": read_key}
    assert runner.invoke(app, ["list"], env=reader).exit_code == 0
    refused = runner.invoke(app, ["keys", "list"], env=reader)
    assert refused.exit_code != 0 and "role is read" in " ".join(refused.output.split())
    listed = runner.invoke(app, ["keys", "list"], env=cli_env)
    out = " ".join(listed.output.split())
    assert listed.exit_code == 0 and "grafana" in out and "read" in out and "admin" in out
    key_id = next(k["id"] for k in Client(service.base_url, service.api_key).keys() if k["name"] == "grafana")
    rotated = runner.invoke(app, ["keys", "rotate", key_id, "--grace-s", "0"], env=cli_env)
    assert rotated.exit_code == 0, rotated.output
    new_key = rotated.stdout.strip()
    assert new_key.startswith("rlad_") and new_key != read_key
    new_id = next(
        k["id"] for k in Client(service.base_url, service.api_key).keys() if k["live"] and k["name"] == "grafana"
    )
    revoked = runner.invoke(app, ["keys", "revoke", new_id], env=cli_env)
    assert revoked.exit_code == 0 and f"revoked {new_id}" in revoked.output
    gone = runner.invoke(app, ["list"], env={"RLAD_URL": service.base_url, "RLAD_API_KEY": new_key})
    assert gone.exit_code != 0 and "revoked" in gone.output
    usage = runner.invoke(app, ["usage"], env=cli_env)
    out = " ".join(usage.output.split())
    assert usage.exit_code == 0 and "jobs queued or running:" in out and "of 100" in out and "TiB" not in out
    assert "steps x batch_size <= 10,000,000" in out and "50 requests/s per key" in out
    log = runner.invoke(app, ["audit"], env=cli_env)
    out = " ".join(log.output.split())
    assert log.exit_code == 0 and "key.create" in out and "key.rotate" in out and "key.revoke" in out
    assert "127.0.0.1" in out
