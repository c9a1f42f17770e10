"""`rlad bench paper-mini` end to end on its smallest preset: every output file and its structure (not the
ranking, which means nothing at this size)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlad.cli import app
from rlad.paper_mini import METHODS, PRESETS, run_suite

pytestmark = pytest.mark.slow


def test_the_tiny_preset_writes_tables_plots_and_raw_numbers(tmp_path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["bench", "paper-mini", "--preset", "tiny", "--workdir", str(tmp_path / "w"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    preset = PRESETS["tiny"]
    data = json.loads((out / "results.json").read_text())
    runs = data["runs"]
    # every method for every seed, plus the ablation's other alphas, each with its final eval by difficulty
    assert sorted((r["task"], r["method"], r["seed"]) for r in runs if r["alpha"] is None) == sorted(
        (t, m, s) for t in ("arith", "kk") for m in METHODS for s in preset.seeds
    )
    assert sorted((r["task"], r["alpha"]) for r in runs if r["alpha"] is not None) == [
        ("kk", a) for a in preset.alphas if a != 0.5
    ]  # the ablation runs on Knights-and-Knaves only
    assert sorted({r["task"] for r in runs}) == ["arith", "kk"]
    levels = {"kk": (2, 3), "arith": (1, 2)}  # people / levels of the tiny preset's tasks
    for r in runs:
        assert {"eval/accuracy", "eval/pass@4", *(f"eval/accuracy/d{d}" for d in levels[r["task"]])} <= set(r["final"])
        if r["method"] != "sft":  # sft trains on teacher traces: no rollout reward of its own
            assert [p[0] for p in r["curves"]["reward_mean"]] == list(range(1, preset.steps + 1))
        assert r["curves"]["eval/accuracy"][0][0] == 0  # the start, before any update
    assert data["hyperparameters"]["shared"]["lr"] == preset.shared["lr"]
    for task in ("kk", "arith"):
        assert set(data["models"][task]) == {"teacher", "student", "teacher_eval", "student_eval"}
    md = (out / "tables.md").read_text()
    assert "| Method | PPL2 | PPL3 | Avg |" in md and "| alpha | PPL2 | PPL3 | Avg |" in md
    assert "| Method | L1 | L2 | Avg |" in md and "| alpha | L1" not in md
    for m in METHODS:
        assert f"\n| {m} | " in md
    assert "alpha 1 (= GRPO)" in md and "Reading (computed):" in md
    for png in ("curves-kk.png", "curves-arith.png", "ablation-kk.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a rerun reuses every finished run (a long suite survives an interruption)
    again = CliRunner().invoke(
        app, ["bench", "paper-mini", "--preset", "tiny", "--workdir", str(tmp_path / "w"), "--out", str(out)]
    )
    assert again.exit_code == 0 and again.output.count("reusing") == len(runs) + 4  # + 2 models per task
    # the answer-diversity check reads the finished runs: the start and the teacher once per seed, then every run
    listing = subprocess.run(
        [sys.executable, "bench/paper_mini_answers.py", "--workdir", str(tmp_path / "w" / "tiny")],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
    ).stdout
    kk_runs = sorted(
        f"kk-{r['method']}" + (f"-a{r['alpha']:g}" if r["alpha"] is not None else "") + f"-s{r['seed']}"
        for r in runs
        if r["task"] == "kk"
    )
    rows = [line.split() for line in listing.splitlines()[1:]]
    assert sorted(r[0] for r in rows if r[0].startswith("kk-")) == kk_runs
    assert sorted(r[0] for r in rows if not r[0].startswith("kk-")) == sorted(
        f"{who}-s{s}" for who in ("start", "teacher") for s in preset.seeds
    )
    for _name, distinct, all_knave, correct in rows:
        shown, total = map(int, distinct.split("/"))
        assert (
            1 <= shown <= total == preset.shared["eval_size"]
            and 0 <= int(all_knave) <= total
            and 0 <= int(correct) <= total
        )


def test_via_api_submits_every_run_as_a_job(tmp_path, tmp_path_factory) -> None:
    from rlad.service import LocalService, free_port

    preset = replace(
        PRESETS["tiny"], tasks=PRESETS["tiny"].tasks[:1], seeds=(0,), methods=("grpo", "rlad"), alphas=(0.5,)
    )
    roots = {"RLAD_MODEL_ROOTS": json.dumps([str(tmp_path_factory.getbasetemp())])}  # the models in tmp_path / "w"
    with LocalService(tmp_path / "service", port=free_port(), env=roots) as svc:
        data = run_suite(
            preset, tmp_path / "w", tmp_path / "out", via_api=svc.base_url, api_key=svc.api_key, log=lambda m: None
        )
        import httpx

        jobs = httpx.get(f"{svc.base_url}/v1/jobs", headers={"Authorization": f"Bearer {svc.api_key}"}).json()["items"]
    assert sorted(j["name"] for j in jobs) == ["kk-grpo-s0", "kk-rlad-s0"]
    assert all(j["status"] == "succeeded" for j in jobs)
    assert {r["job_id"] for r in data["runs"]} == {j["id"] for j in jobs}
    assert all(r["final"]["eval/accuracy"] is not None for r in data["runs"])
    assert (tmp_path / "out" / "tables.md").exists()


def test_models_are_rebuilt_when_their_recipe_changes(tmp_path) -> None:
    from rlad.paper_mini import build_models

    preset = PRESETS["tiny"]
    setup = preset.tasks[1]
    logged: list[str] = []
    first = build_models(preset, setup, tmp_path, logged.append)
    again = build_models(preset, setup, tmp_path, logged.append)
    assert again["teacher"] == first["teacher"] and sum("reusing" in m for m in logged) == 2
    changed = replace(setup, warmup_sft={**setup.warmup_sft, "lr": 1e-3})
    other = build_models(preset, changed, tmp_path, logged.append)
    assert other["teacher"] != first["teacher"] and sum("reusing" in m for m in logged) == 2
    assert json.loads((other["teacher"].parent.parent / "recipe.json").read_text())["lr"] == 1e-3
