"""The memory estimate (rlad_core.memory) and the trainer's refusal to start a run that cannot fit."""

from __future__ import annotations

import math

import pytest
from transformers import AutoConfig

from rlad_core.config import ConfigError, parse_config
from rlad_core.memory import GIB, Shape, estimate
from rlad_core.models import TINY_SIZES, load_model, save_tiny_model
from rlad_core.reporting import MemoryReporter
from rlad_core.trainer import train

QWEN3_0_6B = Shape(
    vocab=151936, hidden=1024, layers=28, heads=16, kv_heads=8, head_dim=128, intermediate=3072, tied=True
)


@pytest.mark.parametrize("size", list(TINY_SIZES))
def test_parameter_counts_from_the_config_are_exact_for_llama_models(tmp_path, size):
    path = save_tiny_model(tmp_path / size, size)
    assert Shape.from_config(AutoConfig.from_pretrained(path)).params == sum(
        p.numel() for p in load_model(str(path)).parameters()
    )


def test_each_memory_option_lowers_the_part_it_is_for():
    base = {"student": "s", "method": "grpo", "dtype": "bfloat16", "batch_size": 256, "max_new_tokens": 4096}
    kw = {"student": QWEN3_0_6B, "teacher": None, "reference": False, "prompt_tokens": 200}
    plain = estimate(parse_config({**base, "micro_batch_size": 16}), **kw)
    # Qwen3-0.6B (~0.6B parameters incl. the tied embedding) in bf16: about 1.1 GiB of weights; fp32 masters and
    # AdamW moments (12 bytes a parameter), bf16 gradients and their fp32 copies (6 bytes)
    assert 1.0 < plain.weights / GIB < 1.3 and plain.optimizer == 6 * plain.weights == 2 * plain.gradients
    ckpt = estimate(parse_config({**base, "micro_batch_size": 16, "gradient_checkpointing": True}), **kw)
    chunked = estimate(parse_config({**base, "micro_batch_size": 16}), **kw, vocab_chunk=32768)
    smaller = estimate(parse_config({**base, "micro_batch_size": 4}), **kw)
    assert ckpt.update < plain.update and chunked.update < plain.update and smaller.update < plain.update
    assert ckpt.rollout == plain.rollout  # sampling does not depend on the update's options
    fsdp4 = estimate(parse_config({**base, "strategy": "fsdp"}), **kw, world_size=4)
    fsdp2 = estimate(parse_config({**base, "strategy": "fsdp"}), **kw, world_size=2)
    ddp4 = estimate(parse_config({**base, "strategy": "ddp"}), **kw, world_size=4)
    assert fsdp4.optimizer * 2 == fsdp2.optimizer and ddp4.optimizer == plain.optimizer  # DDP: a full replica
    assert fsdp4.rollout == ddp4.rollout < plain.rollout
    # FSDP's fp32 shards are the masters: a quarter of fp32 weights, gradients and AdamW moments per process
    assert fsdp4.weights == pytest.approx(2 * plain.weights / 4, rel=1e-6)
    assert fsdp4.gradients == pytest.approx(plain.weights * 2 / 4, rel=1e-6) and fsdp4.optimizer == 2 * fsdp4.gradients


def test_a_run_that_cannot_fit_is_refused_before_any_model_loads(tmp_path):
    student = save_tiny_model(tmp_path / "s", "micro")
    spec = {"student": str(student), "method": "grpo", "batch_size": 4096, "group_size": 8, "steps": 1}
    spec |= {"max_new_tokens": 1 << 20, "output_dir": str(tmp_path / "run"), "device": "cpu"}
    with pytest.raises(ConfigError) as info:
        train(parse_config(spec))
    ((field, message),) = info.value.errors
    assert field == "memory_check" and "GiB are free" in message and "gradient_checkpointing: true" in message
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_estimate_is_reported_when_the_run_starts(tmp_path):
    student = save_tiny_model(tmp_path / "s", "micro")
    spec = {"student": str(student), "method": "grpo", "batch_size": 8, "group_size": 4, "steps": 1}
    spec |= {"max_new_tokens": 8, "output_dir": str(tmp_path / "run"), "eval_every": 0, "checkpoint_every": 0}
    rep = MemoryReporter()
    train(parse_config(spec), reporter=rep)
    started = next(data for kind, data in rep.events if kind == "started")
    parts = started["memory_gib"]
    assert set(parts) == {"weights", "gradients", "optimizer", "rollout", "update", "runtime", "total"}
    assert 0 < parts["weights"] < parts["total"]


def test_the_teachers_dtype_and_device_change_what_the_students_device_holds():
    base = {"student": "s", "teacher": "t", "method": "rlad", "dtype": "float32"}
    kw = {"student": QWEN3_0_6B, "teacher": QWEN3_0_6B, "reference": False, "prompt_tokens": 100}
    same = estimate(parse_config(base), **kw)
    half = estimate(parse_config({**base, "teacher_dtype": "bfloat16"}), **kw)
    away = estimate(parse_config({**base, "teacher_device": "cpu"}), **kw)
    student_weights = away.weights
    assert same.weights == 2 * student_weights and half.weights == student_weights + student_weights // 2


def test_a_teacher_in_another_dtype_on_the_cpu_scores_for_a_student(tmp_path):
    """rlad with an fp32 student and a bf16 teacher (and reference) placed explicitly on the CPU."""
    import torch

    from rlad_core.trainer import _setup

    student = save_tiny_model(tmp_path / "s", "micro", seed=0)
    teacher = save_tiny_model(tmp_path / "t", "micro", seed=1)
    spec = {"student": str(student), "teacher": str(teacher), "method": "rlad", "beta": 0.01, "device": "cpu"}
    spec |= {"teacher_dtype": "bfloat16", "teacher_device": "cpu", "batch_size": 8, "group_size": 4, "steps": 2}
    spec |= {"max_new_tokens": 8, "output_dir": str(tmp_path / "run"), "eval_every": 0, "checkpoint_every": 0}
    config = parse_config(spec)
    run = _setup(config, None)
    assert run.teacher.dtype == run.reference.dtype == torch.bfloat16 and run.student.dtype == torch.float32
    rep = MemoryReporter()
    train(config, reporter=rep)
    rows = rep.train_metrics()
    assert sorted(rows) == [1, 2] and all(math.isfinite(r["teacher_gap"]) for r in rows.values())


def test_teacher_placement_errors_name_the_field():
    with pytest.raises(ConfigError) as info:
        parse_config({"student": "s", "teacher": "t", "teacher_device": "gpu0"})
    assert info.value.errors[0][0] == "teacher_device"
    with pytest.raises(ConfigError) as info:
        parse_config({"student": "s", "teacher": "t", "teacher_device": "cpu", "teacher_sharding": "shard"})
    assert "teacher_sharding" in info.value.errors[0][1]
