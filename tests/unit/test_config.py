"""Config validation: every bad value fails before any model loads, naming the field and the fix."""

from __future__ import annotations

import json

import pytest
import yaml

from rlad_core.config import ConfigError, TrainConfig, load_config, parse_config

BASE = {"student": "/nonexistent/student", "teacher": "/nonexistent/teacher"}


def errors_of(**fields) -> dict[str, str]:
    with pytest.raises(ConfigError) as exc:
        parse_config({**BASE, **fields})
    return dict(exc.value.errors)


def test_defaults_follow_the_paper():
    c = parse_config(BASE)
    assert (c.method, c.alpha, c.eps_low, c.eps_high, c.teacher_clamp, c.group_size) == ("rlad", 0.5, 0.2, 0.28, 1.0, 8)
    assert c.aggregation == "seq-mean-token-mean" and c.adv_std == "population" and c.beta == 0.0
    assert c.num_prompts == 8 and not c.needs_old_logp


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"group_size": 1}, "group_size", ["at least 2", "fix"]),
        ({"alpha": 1.5}, "alpha", ["[0, 1]", "fix"]),
        ({"alpha": -0.1}, "alpha", ["[0, 1]"]),
        ({"eps_low": -0.2}, "eps_low", [">= 0", "fix"]),
        ({"eps_high": -1}, "eps_high", [">= 0"]),
        ({"method": "ppo"}, "method", ["'rlad'", "'grpo'", "'kdrl'", "'opd'", "'sft'"]),
        ({"task": {"name": "sudoku"}}, "task", ["sudoku", "knights_knaves"]),
        ({"task": {"name": "knights_knaves", "n_people": [1, 9]}}, "task.knights_knaves.n_people", ["2..8"]),
        ({"colour": "red"}, "colour", ["unknown field"]),
    ],
)
def test_field_errors_name_field_and_fix(fields, field, words):
    errs = errors_of(**fields)
    assert field in errs, errs
    for w in words:
        assert w in errs[field], errs[field]


def test_batch_not_divisible_by_group_size():
    errs = errors_of(batch_size=30, group_size=8)
    msg = errs["(config)"]
    assert "batch_size 30" in msg and "group_size 8" in msg and "fix" in msg and "24" in msg


@pytest.mark.parametrize("method", ["rlad", "kdrl", "opd"])
def test_teacher_methods_need_a_teacher(method):
    with pytest.raises(ConfigError, match=f"method '{method}' needs a teacher.*fix"):
        parse_config({"student": "s", "method": method})


def test_sft_needs_teacher_unless_reference_traces():
    with pytest.raises(ConfigError, match="sft_source: reference"):
        parse_config({"student": "s", "method": "sft"})
    assert parse_config({"student": "s", "method": "sft", "sft_source": "reference"}).needs_teacher is False
    assert parse_config({"student": "s", "method": "grpo"}).teacher is None


def test_micro_and_mini_batches_must_divide():
    assert "micro_batch_size 24" in errors_of(batch_size=64, micro_batch_size=24)["(config)"]
    c = parse_config({**BASE, "batch_size": 64, "mini_batch_size": 32, "micro_batch_size": 16})
    assert c.needs_old_logp and c.resolved_micro_batch_size == 16
    assert parse_config({**BASE, "inner_epochs": 2}).needs_old_logp


def test_all_errors_reported_together():
    errs = errors_of(group_size=1, alpha=2.0, eps_low=-1)
    assert {"group_size", "alpha", "eps_low"} <= set(errs)


def test_round_trips_through_json_and_yaml(tmp_path):
    c = parse_config(
        {**BASE, "method": "kdrl", "task": {"name": "knights_knaves", "n_people": [3, 2]}, "teacher_clamp": None}
    )
    assert c.task.n_people == [2, 3]
    assert TrainConfig.model_validate(json.loads(json.dumps(c.to_json_dict()))) == c
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(c.to_json_dict()))
    assert load_config(p) == c


def test_load_config_overrides_and_file_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({**BASE, "task": {"name": "arithmetic"}}))
    c = load_config(p, {"steps": 7, "task.levels": [3]})
    assert c.steps == 7 and c.task.levels == [3]
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_knights_knaves_reasoning_option_reaches_the_task() -> None:
    from rlad_core.tasks import get_task

    cfg = parse_config({**BASE, "task": {"name": "knights_knaves", "n_people": [2], "reasoning": False}})
    task = get_task(cfg.task.name, **cfg.task.model_dump(exclude={"name"}))
    example = task.examples(1, seed=0)[0]
    assert task.solution(example) == f"ANSWER: {example.answer}"
    assert parse_config({**BASE, "task": {"name": "knights_knaves"}}).task.reasoning is True


def test_knights_knaves_prompt_style_reaches_the_task_and_is_checked() -> None:
    from rlad_core.tasks import get_task

    cfg = parse_config({**BASE, "task": {"name": "knights_knaves", "n_people": [3], "prompt_style": "compact"}})
    task = get_task(cfg.task.name, **cfg.task.model_dump(exclude={"name"}))
    assert task.examples(1, seed=0)[0].prompt.splitlines()[1].startswith("A: ")
    with pytest.raises(ConfigError, match="prompt_style"):
        parse_config({**BASE, "task": {"name": "knights_knaves", "prompt_style": "short"}})


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"steps": 3_000_000_000}, "steps", ["less than or equal to 10000000"]),
        ({"steps": 99999999999999999999999}, "steps", ["less than or equal"]),
        ({"name": "a\x00b"}, "name", ["control character", "fix"]),
        ({"student": "/models/a\x00b"}, "student", ["control character"]),
        ({"task": {"name": "jsonl", "path": "/d\x00.jsonl"}}, "task.jsonl.path", ["control character"]),
        ({"seed": 1e23}, "seed", ["integer"]),
        ({"seed": 2**32}, "seed", ["less than or equal to 4294967295"]),
        ({"seed": -1}, "seed", ["greater than or equal to 0"]),
        ({"lr": float("inf")}, "lr", ["finite number"]),
        ({"lr": float("nan")}, "lr", ["finite number"]),
        ({"device": "gpu"}, "device", ["not a device", "cuda:N"]),
        ({"device": "cuda:x"}, "device", ["not a device"]),
        ({"adam_betas": [0.9, 1.5]}, "adam_betas.1", ["less than 1"]),
    ],
)
def test_values_that_only_failed_at_run_time_fail_at_validation(fields, field, words):
    """Drill inputs that the service accepted and then failed on at run time (or stored as a 500)."""
    errors = errors_of(**fields)
    assert field in errors, errors
    for w in words:
        assert w in errors[field], errors[field]


def test_json_1e999_is_refused_as_not_finite():
    body = json.loads('{"student": "s", "teacher": "t", "lr": 1e999}')
    with pytest.raises(ConfigError) as exc:
        parse_config(body)
    assert dict(exc.value.errors)["lr"].startswith("Input should be a finite number")


def test_a_device_this_machine_lacks_is_a_config_error_before_any_load():
    import torch

    from rlad_core.trainer import _resolve_device

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ConfigError) as exc:
        _resolve_device(f"cuda:{n + 98}")
    ((field, message),) = exc.value.errors
    assert field == "device" and f"cuda:{n + 98}" in message and f"has {n} CUDA device" in message
    assert _resolve_device("cpu") == "cpu"
