"""The checkpoint layout (rlad_core.layout): names, listing, verification against the manifest, the swap."""

from __future__ import annotations

import hashlib
import json

import pytest

from rlad_core import layout


def _checkpoint(root, step: int, files: dict[str, bytes]) -> None:
    d = layout.step_dir(root, step)
    d.mkdir(parents=True)
    for name, data in files.items():
        (d / name).write_bytes(data)
    manifest = {n: {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in files.items()}
    (d / layout.MANIFEST).write_text(json.dumps({"step": step, "files": manifest}))


def test_steps_are_listed_in_order_and_incomplete_or_temporary_directories_are_not(tmp_path) -> None:
    for step in (10, 2, 4):
        _checkpoint(tmp_path, step, {"a": b"x"})
    (tmp_path / "step-7").mkdir()  # no manifest: incomplete
    (tmp_path / ".tmp-step-12-ab12cd34").mkdir()
    (tmp_path / "step-x").mkdir()
    assert layout.list_steps(tmp_path) == [2, 4, 10]
    assert layout.list_steps(tmp_path / "absent") == []
    assert layout.step_of(tmp_path / "step-10") == 10 and layout.step_of("step-x") is None


def test_verify_names_the_first_file_that_does_not_match(tmp_path) -> None:
    _checkpoint(tmp_path, 1, {"a": b"abc", "b": b"def"})
    d = layout.step_dir(tmp_path, 1)
    raw = (d / layout.MANIFEST).read_bytes()
    assert layout.verify(d, manifest_sha256=hashlib.sha256(raw).hexdigest())["step"] == 1
    with pytest.raises(layout.ManifestMismatch, match="published sha256"):
        layout.verify(d, manifest_sha256="0" * 64)
    (d / "b").write_bytes(b"deg")  # same size, other bytes
    with pytest.raises(layout.ManifestMismatch, match="b sha256 .* does not match"):
        layout.verify(d)
    (d / "a").unlink()
    with pytest.raises(layout.ManifestMismatch, match="a is missing"):
        layout.verify(d)


LORA = [
    "adapter_config.json",
    "adapter_model.safetensors",
    "tokenizer.json",
    "trainer_state.pt",
    "merged/config.json",
    "merged/model.safetensors",
    "merged/tokenizer.json",
]
FULL = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "trainer_state.pt",
    "optimizer/.metadata",
    "optimizer/__0_0.distcp",
]


def test_parts_of_a_lora_checkpoint() -> None:
    m = layout.MANIFEST
    assert layout.part_files(LORA, "all") == {n: n for n in [*LORA, m]}
    adapter = {n: n for n in ["adapter_config.json", "adapter_model.safetensors", "tokenizer.json", m]}
    assert layout.part_files(LORA, "adapter") == adapter == layout.part_files(LORA, "model")
    merged = {
        "config.json": "merged/config.json",
        "model.safetensors": "merged/model.safetensors",
        "tokenizer.json": "merged/tokenizer.json",
        m: m,
    }
    assert layout.part_files(LORA, "merged") == merged


def test_parts_of_a_full_checkpoint_and_the_parts_it_lacks() -> None:
    assert layout.part_files(FULL, "model") == {n: n for n in FULL[:3] + [layout.MANIFEST]}
    with pytest.raises(layout.PartMissing, match="trained in full.*fix: download part 'model'"):
        layout.part_files(FULL, "adapter")
    with pytest.raises(layout.PartMissing, match="merge_lora_on_save: true.*fix"):
        layout.part_files(FULL, "merged")
    with pytest.raises(ValueError, match="unknown checkpoint part 'weights'"):
        layout.part_files(FULL, "weights")
    assert layout.download_name("job_1", 4) == "job_1-step-4"
    assert layout.download_name("job_1", 4, "merged") == "job_1-step-4-merged"


def test_a_downloaded_part_verifies_against_the_checkpoint_manifest(tmp_path) -> None:
    files = {n: n.encode() * 3 for n in LORA}
    _checkpoint(tmp_path, 1, {})
    d = layout.step_dir(tmp_path, 1)
    manifest = {n: {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in files.items()}
    (d / layout.MANIFEST).write_text(json.dumps({"step": 1, "files": manifest}))
    for local, src in layout.part_files(LORA, "merged").items():  # what a merged download unpacks to
        if src != layout.MANIFEST:
            (d / local).write_bytes(files[src])
    assert layout.verify(d, part="merged")["step"] == 1
    with pytest.raises(layout.ManifestMismatch, match="adapter_config.json is missing"):
        layout.verify(d, part="adapter")
    (d / "model.safetensors").write_bytes(b"x")
    with pytest.raises(layout.ManifestMismatch, match="model.safetensors has 1 bytes"):
        layout.verify(d, part="merged")


def test_replace_dir_swaps_by_renames_and_leaves_nothing_behind(tmp_path) -> None:
    new, dst = tmp_path / "new", tmp_path / "dst"
    dst.mkdir()
    (dst / "old").write_text("old")
    new.mkdir()
    (new / "f").write_text("new")
    layout.replace_dir(new, dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst"] and (dst / "f").read_text() == "new"
