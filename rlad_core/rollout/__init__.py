"""Rollout engines: sample completions from the student (or teacher) for a batch of prompts.

The trainer only sees the `RolloutEngine` protocol and `make_engine`; three engines implement it:

  hf     `HFEngine`: Hugging Face `model.generate`. Reference semantics, works for any causal LM; its per-step
         overhead (module dispatch, logits processors, a growing DynamicCache) dominates for small models.
  fast   `FastEngine`: a compact decoder forward for Llama-family architectures (Llama, Mistral without an active
         sliding window, Qwen2, Qwen3) over a preallocated KV cache, reading the weights from the HF modules
         themselves, so in-place optimizer updates are seen without any re-sync. Same distribution as `hf`.
  vllm   `VLLMEngine`: vLLM on a GPU worker (optional dependency, imported only when the engine is built;
         requirements/gpu.txt, or requirements/vllm-cpu.txt on a CPU).

All engines return `Rollouts`: left-padded prompts, completions padded after their first EOS, the completion
mask (including that EOS) and the log-prob of every sampled token under the distribution it was drawn from.
Position ids follow Hugging Face `generate`: `attention_mask.cumsum(-1) - 1` clamped at 0, so that a later full
forward over prompt + completion with those positions (`scoring.completion_logprobs`) gives the same log-probs.
"""

from __future__ import annotations

from typing import Any, Literal

from rlad_core.rollout.base import RolloutEngine, Rollouts, SamplingParams, sample_next_token, top_p_filter
from rlad_core.rollout.fast import FastEngine
from rlad_core.rollout.hf import HFEngine
from rlad_core.rollout.vllm_engine import VLLM_MISSING, VLLMEngine

__all__ = [
    "FastEngine",
    "HFEngine",
    "RolloutEngine",
    "Rollouts",
    "SamplingParams",
    "VLLM_MISSING",
    "VLLMEngine",
    "make_engine",
    "sample_next_token",
    "top_p_filter",
]


def make_engine(
    name: Literal["hf", "fast", "vllm"],
    model: Any,
    *,
    eos_token_id: int,
    pad_token_id: int,
    **options: Any,
) -> RolloutEngine:
    """Build a rollout engine. `model` is the HF module for "hf"/"fast" and a model path (or a module whose
    `name_or_path` and dtype are used) for "vllm"; `options` go to the engine's constructor."""
    if name == "hf":
        return HFEngine(model, eos_token_id=eos_token_id, pad_token_id=pad_token_id, **options)
    if name == "fast":
        return FastEngine(model, eos_token_id=eos_token_id, pad_token_id=pad_token_id, **options)
    if name == "vllm":
        if isinstance(model, str):
            path = model
        else:  # vLLM loads the module's checkpoint directory, in the module's dtype unless told otherwise
            path = model.name_or_path
            options.setdefault("dtype", str(next(model.parameters()).dtype).removeprefix("torch."))
        return VLLMEngine(path, eos_token_id=eos_token_id, pad_token_id=pad_token_id, **options)
    raise ValueError(f"unknown rollout engine {name!r}; choose 'hf', 'fast' or 'vllm'")
