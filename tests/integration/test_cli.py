"""The `rlad` command line: train from a YAML config, validation errors, tiny-model builder."""

from __future__ import annotations

import json

import yaml
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from rlad.cli import app

runner = CliRunner()


def test_train_runs_a_config_and_writes_metrics_and_checkpoint(tmp_path, warm_dirs):
    cfg = {
        "method": "rlad",
        "student": str(warm_dirs["student"]),
        "teacher": str(warm_dirs["teacher"]),
        "task": {"name": "arithmetic", "levels": [1]},
        "steps": 2,
        "batch_size": 8,
        "group_size": 4,
        "max_new_tokens": 12,
        "lr": 1e-3,
        "eval_every": 2,
        "eval_size": 4,
        "checkpoint_every": 1,
        "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["train", str(path), "--set", "steps=3", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "held-out evaluation" in result.output and "checkpoint:" in result.output
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["steps"] == 3
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "checkpoints" / "step-3") is not None
    # resume: nothing left to do, the run ends at once at step 3
    again = runner.invoke(app, ["train", str(path), "--set", "steps=3", "--quiet", "--resume", "auto"])
    assert again.exit_code == 0, again.output


def test_invalid_config_exits_2_naming_fields(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"student": "x", "method": "rlad", "group_size": 1, "alpha": 3}))
    result = runner.invoke(app, ["train", str(path)])
    assert result.exit_code == 2
    out = result.output
    assert "group_size" in out and "alpha" in out and "fix" in out
    bad_override = runner.invoke(app, ["train", str(path), "--set", "steps"])
    assert bad_override.exit_code == 2 and "KEY=VALUE" in bad_override.output


def test_validate_prints_defaults_and_tiny_model_builds(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump({"student": "s", "method": "grpo"}))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0 and json.loads(result.output)["eps_high"] == 0.28
    out = tmp_path / "tiny"
    result = runner.invoke(app, ["tiny-model", str(out), "--size", "micro"])
    assert result.exit_code == 0 and "parameters" in result.output
    assert (out / "model.safetensors").is_file()
    bad = runner.invoke(app, ["tiny-model", str(out), "--size", "huge"])
    assert bad.exit_code == 2 and "micro" in bad.output


def test_missing_model_is_a_clear_error_not_a_traceback(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "student": str(tmp_path / "no-such-model"),
                "method": "grpo",
                "steps": 1,
                "output_dir": str(tmp_path / "run"),
            }
        )
    )
    result = runner.invoke(app, ["train", str(path), "--quiet"])
    assert result.exit_code == 1
    text = "".join(result.output.split())  # rich wraps long lines
    assert "trainingfailed" in text and "no-such-modeldoesnotexist" in text
    assert "Traceback" not in result.output
