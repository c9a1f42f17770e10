"""Atomic checkpoints: manifest with sha256, from_pretrained loads them, a failed save leaves nothing behind."""

from __future__ import annotations

import errno
import json
import pickle
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlad_core import checkpoint as ck
from rlad_core.models import TINY_SIZES, build_char_tokenizer, build_tiny_model


@pytest.fixture()
def model_and_tokenizer():
    tok = build_char_tokenizer()
    return build_tiny_model(tok, TINY_SIZES["micro"], seed=0), tok


def test_save_writes_manifest_and_loads_with_from_pretrained(tmp_path, model_and_tokenizer):
    model, tok = model_and_tokenizer
    path = ck.save_checkpoint(tmp_path, 3, model=model, tokenizer=tok, trainer_state={"step": 3}, metrics={"loss": 0.5})
    assert path == tmp_path / "step-3"
    manifest = ck.verify_checkpoint(path)
    assert manifest["step"] == 3 and manifest["metrics"] == {"loss": 0.5}
    assert {"model.safetensors", "config.json", "tokenizer.json", ck.TRAINER_STATE} <= set(manifest["files"])
    assert manifest["files"]["model.safetensors"]["sha256"] == ck.sha256_file(path / "model.safetensors")

    loaded = AutoModelForCausalLM.from_pretrained(path)
    ltok = AutoTokenizer.from_pretrained(path)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    ids = ltok("12+3=", return_tensors="pt")
    out = loaded.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=ltok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]
    assert ck.load_trainer_state(path)["step"] == 3


def test_corrupted_file_fails_verification(tmp_path, model_and_tokenizer):
    model, tok = model_and_tokenizer
    path = ck.save_checkpoint(tmp_path, 1, model=model, tokenizer=tok, trainer_state={})
    with open(path / "config.json", "a") as f:
        f.write(" ")
    with pytest.raises(ck.CheckpointError, match="config.json has .* bytes, the manifest says"):
        ck.verify_checkpoint(path)


def test_failed_save_leaves_no_partial_checkpoint(tmp_path, model_and_tokenizer):
    model, tok = model_and_tokenizer
    good = ck.save_checkpoint(tmp_path, 1, model=model, tokenizer=tok, trainer_state={"v": 1})

    class Boom:
        def save_pretrained(self, path):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(tmp_path, 2, model=model, tokenizer=Boom(), trainer_state={})
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(tmp_path, 1, model=model, tokenizer=Boom(), trainer_state={"v": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-1"]  # no temporary directory left
    assert ck.load_trainer_state(good) == {"v": 1}  # the earlier checkpoint is untouched
    assert ck.list_checkpoints(tmp_path) == [good]


def test_list_latest_and_prune(tmp_path, model_and_tokenizer):
    model, tok = model_and_tokenizer
    for step in (2, 10, 4):
        ck.save_checkpoint(tmp_path, step, model=model, tokenizer=tok, trainer_state={})
    (tmp_path / ".tmp-step-12-abc").mkdir()  # an interrupted save is not a checkpoint
    (tmp_path / "step-14").mkdir()  # nor is a directory without a manifest
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step-2", "step-4", "step-10"]
    assert ck.latest_checkpoint(tmp_path).name == "step-10"
    ck.prune_checkpoints(tmp_path, 2)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step-4", "step-10"]
    assert json.loads((tmp_path / "step-10" / ck.MANIFEST).read_text())["step"] == 10


def test_free_space_check_raises_disk_full_and_writes_nothing(tmp_path, model_and_tokenizer):
    model, tok = model_and_tokenizer
    good = ck.save_checkpoint(tmp_path, 1, model=model, tokenizer=tok, trainer_state={"v": 1})
    reserve = 1 << 60  # more than any disk has free
    with pytest.raises(ck.DiskFull) as info:
        ck.save_checkpoint(tmp_path, 2, model=model, tokenizer=tok, trainer_state={"v": 2}, reserve_bytes=reserve)
    full = info.value
    size = sum(p.stat().st_size for p in good.iterdir())
    # needed = the newest checkpoint's size plus the margin, plus the reserve; free = what the disk has
    assert full.needed == int(size * (1 + ck.MARGIN_FRACTION)) + ck.MARGIN_BYTES + reserve
    assert 0 < full.free < full.needed and full.path == str(tmp_path)
    assert str(full) == f"disk full: {full.needed} bytes needed, {full.free} free at {tmp_path}"
    assert isinstance(full, OSError) and full.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-1"]  # nothing written
    assert ck.load_trainer_state(good) == {"v": 1}
    assert pickle.loads(pickle.dumps(full)).needed == full.needed  # crosses process boundaries intact


def test_first_checkpoint_estimate_counts_weights_and_optimizer_state(tmp_path, model_and_tokenizer):
    model, _ = model_and_tokenizer
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    moments = {"exp_avg": torch.zeros(1000), "exp_avg_sq": torch.zeros(1000, dtype=torch.float64)}
    estimate = ck.estimate_checkpoint_bytes(tmp_path, model=model, trainer_state={"optimizer": {"state": {0: moments}}})
    assert estimate == int((weights + 4000 + 8000) * (1 + ck.MARGIN_FRACTION)) + ck.MARGIN_BYTES


def test_out_of_space_errors_are_recognised():
    assert ck.is_out_of_space(OSError(errno.ENOSPC, "No space left on device"))
    assert ck.is_out_of_space(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not ck.is_out_of_space(OSError(errno.EACCES, "Permission denied"))
    assert not ck.is_out_of_space(OSError("disk full"))  # no errno: not ours to reinterpret
    # safetensors' error carries only the OS message; torch's zip writer loses the errno entirely
    assert ck.is_out_of_space(Exception("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert ck.is_out_of_space(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"))
    assert not ck.is_out_of_space(RuntimeError("[enforce fail at inline_container.cc:319] . file not found: a/b"))
    assert not ck.is_out_of_space(RuntimeError("CUDA error: out of memory"))


def test_full_disk_during_the_write_is_undone_and_raised_as_disk_full(small_disk, fill_disk, model_and_tokenizer):
    model, tok = model_and_tokenizer
    disk = small_disk(4 << 20)
    root = disk / "ckpt"
    good = ck.save_checkpoint(root, 1, model=model, tokenizer=tok, trainer_state={"v": 1})
    # a trainer state whose bulk is no tensor: the estimate (the newest checkpoint's size) passes the
    # pre-check, the write itself then runs out of space in trainer_state.pt
    free_before = shutil.disk_usage(disk).free
    blob = b"x" * free_before
    assert ck.estimate_checkpoint_bytes(root, model=model, trainer_state={"blob": blob}) < free_before
    with pytest.raises(ck.DiskFull, match=r"^disk full: \d+ bytes needed, \d+ free at ") as info:
        ck.save_checkpoint(root, 2, model=model, tokenizer=tok, trainer_state={"blob": blob})
    # what failed: torch's zip writer, "unexpected pos ..." (or ENOSPC, when the last flush is what fails)
    assert ck.is_out_of_space(info.value.__cause__) and not isinstance(info.value.__cause__, ck.DiskFull)
    assert info.value.needed > free_before  # what it used before failing, plus the margin: waiting for that helps
    assert sorted(p.name for p in root.iterdir()) == ["step-1"]  # the temporary directory is gone
    assert shutil.disk_usage(disk).free == free_before
    assert ck.load_trainer_state(good) == {"v": 1} and ck.list_checkpoints(root) == [good]

    # the same on a replace of an existing step: the old checkpoint stays as it was
    with pytest.raises(ck.DiskFull):
        ck.save_checkpoint(root, 1, model=model, tokenizer=tok, trainer_state={"blob": blob})
    assert sorted(p.name for p in root.iterdir()) == ["step-1"] and ck.load_trainer_state(good) == {"v": 1}

    # torch's own file writer (a path, not a Python file) reports ENOSPC as a RuntimeError without errno
    fill_disk(disk)
    with pytest.raises(RuntimeError) as torch_error:
        torch.save({"x": torch.zeros(100_000)}, disk / "direct.pt")
    assert "inline_container" in str(torch_error.value) and ck.is_out_of_space(torch_error.value)


def test_full_disk_while_writing_the_weights_is_disk_full_too(small_disk, fill_disk, model_and_tokenizer, monkeypatch):
    model, tok = model_and_tokenizer
    disk = small_disk(4 << 20)
    monkeypatch.setattr(ck, "estimate_checkpoint_bytes", lambda root, **_: 1)  # let the write start
    fill_disk(disk, leave=200_000)  # less than model.safetensors (~425 kB)
    with pytest.raises(ck.DiskFull) as info:
        ck.save_checkpoint(disk / "ckpt", 1, model=model, tokenizer=tok, trainer_state={})
    # safetensors' own error type, with the OS message only
    assert "No space left on device" in str(info.value.__cause__) and not isinstance(info.value.__cause__, OSError)
    assert info.value.free < 200_000 < info.value.needed
    assert list((disk / "ckpt").iterdir()) == []
