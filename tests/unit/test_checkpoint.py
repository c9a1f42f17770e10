"""Atomic checkpoints: manifest with sha256, from_pretrained loads them, a failed save leaves nothing behind."""

from __future__ import annotations

import json

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
    with pytest.raises(ck.CheckpointError, match="config.json does not match"):
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
