"""`rlad bench paper-mini` end to end on its smallest preset: every output file and its structure (not the
ranking, which means nothing at this size)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from rlad.cli import app
from rlad.paper_mini import METHODS, PRESETS, run_suite

pytestmark = pytest.mark.slow


def test_the_tiny_preset_writes_tables_plots_and_raw_numbers(tmp_path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["bench", "paper-mini", "--preset", "tiny", "--workdir", str(tmp_path / "w"),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    preset = PRESETS["tiny"]
    data = json.loads((out / "results.json").read_text())
    runs = data["runs"]
    # every method for every seed, plus the ablation's other alphas, each with its final eval by difficulty
    assert sorted((r["method"], r["seed"]) for r in runs if r["alpha"] is None) == sorted(
        (m, s) for m in METHODS for s in preset.seeds)
    assert sorted(r["alpha"] for r in runs if r["alpha"] is not None) == [a for a in preset.alphas if a != 0.5]
    for r in runs:
        assert {"eval/accuracy", "eval/accuracy/d1", "eval/accuracy/d2", "eval/pass@4"} <= set(r["final"])
        if r["method"] != "sft":  # sft trains on teacher traces: no rollout reward of its own
            assert [p[0] for p in r["curves"]["reward_mean"]] == list(range(1, preset.steps + 1))
        assert r["curves"]["eval/accuracy"][0][0] == 0  # the start, before any update
    assert data["hyperparameters"]["shared"]["lr"] == preset.shared["lr"]
    assert set(data["models"]["arith"]) == {"teacher", "student", "teacher_eval", "student_eval"}
    md = (out / "tables.md").read_text()
    assert "| Method | L1 | L2 | Avg |" in md and "| alpha | L1 | L2 | Avg |" in md
    for m in METHODS:
        assert f"\n| {m} | " in md
    assert "alpha 1 (= GRPO)" in md and "Reading (computed):" in md
    for png in ("curves-arith.png", "ablation-arith.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a rerun reuses every finished run (a long suite survives an interruption)
    again = CliRunner().invoke(app, ["bench", "paper-mini", "--preset", "tiny", "--workdir", str(tmp_path / "w"),
                                     "--out", str(out)])
    assert again.exit_code == 0 and again.output.count("reusing") == len(runs) + 2


def test_via_api_submits_every_run_as_a_job(tmp_path) -> None:
    from rlad.service import LocalService, free_port

    preset = replace(PRESETS["tiny"], seeds=(0,), methods=("grpo", "rlad"), alphas=(0.5,))
    with LocalService(tmp_path / "service", port=free_port()) as svc:
        data = run_suite(preset, tmp_path / "w", tmp_path / "out", via_api=svc.base_url, api_key=svc.api_key,
                         log=lambda m: None)
        import httpx

        jobs = httpx.get(f"{svc.base_url}/v1/jobs", headers={"Authorization": f"Bearer {svc.api_key}"}).json()["items"]
    assert sorted(j["name"] for j in jobs) == ["arith-grpo-s0", "arith-rlad-s0"]
    assert all(j["status"] == "succeeded" for j in jobs)
    assert {r["job_id"] for r in data["runs"]} == {j["id"] for j in jobs}
    assert all(r["final"]["eval/accuracy"] is not None for r in data["runs"])
    assert (tmp_path / "out" / "tables.md").exists()
