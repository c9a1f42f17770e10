"""Rollout engines: sample completions from the student (or teacher) for a batch of prompts.

The trainer only sees the `RolloutEngine` protocol and `make_engine`; three engines implement it:

  hf     `HFEngine`: Hugging Face `model.generate`. Reference semantics, works for any causal LM; its per-step
         overhead (module dispatch, logits processors, a growing DynamicCache) dominates for small models.
  fast   `FastEngine`: a compact decoder forward for Llama-family architectures (Llama, Mistral without an active
         sliding window, Qwen2, Qwen3) over a preallocated KV cache, reading the weights from the HF modules
         themselves, so in-place optimizer updates are seen without any re-sync. Same distribution as `hf`.
  vllm   `VLLMEngine`: vLLM on a GPU worker (optional dependency, imported only when the engine is built).

All engines return `Rollouts`: left-padded prompts, completions padded after their first EOS, the completion
mask (including that EOS) and the log-prob of every sampled token under the distribution it was drawn from.
Position ids follow Hugging Face `generate`: `attention_mask.cumsum(-1) - 1` clamped at 0, so that a later full
forward over prompt + completion with those positions (`scoring.completion_logprobs`) gives the same log-probs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F

__all__ = [
    "FastEngine",
    "HFEngine",
    "RolloutEngine",
    "Rollouts",
    "SamplingParams",
    "VLLMEngine",
    "make_engine",
    "sample_next_token",
    "top_p_filter",
]

VLLM_MISSING = "engine 'vllm' needs the GPU worker requirements: pip install -r requirements/gpu.txt"


# ---------------------------------------------------------------------------------------------------------
# Data types
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: `temperature == 0` means greedy (then `top_p` is ignored)."""

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Rollouts:
    """One batch of sampled completions (row i continues prompt i).

    prompt_ids       (B, Lp) long   left-padded with pad_id
    prompt_mask      (B, Lp) long   1 on real prompt tokens
    completion_ids   (B, T)  long   T = decode steps actually run; pad_id after a row's first EOS
    completion_mask  (B, T)  float  1 on sampled tokens up to and including the first EOS, 0 after
    sample_logp      (B, T)  float  log-prob of each sampled token under the distribution it was drawn from
                                    (after temperature and top-p; greedy: log_softmax of the raw logits); 0 where
                                    the mask is 0
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    sample_logp: torch.Tensor

    @property
    def input_ids(self) -> torch.Tensor:
        """Prompt + completion, (B, Lp + T)."""
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """Mask of `input_ids`, (B, Lp + T) long: real prompt tokens and completion tokens up to the first EOS."""
        return torch.cat([self.prompt_mask, self.completion_mask.long()], dim=1)

    @property
    def completion_lengths(self) -> torch.Tensor:
        """Number of completion tokens of each row, EOS included, (B,) long."""
        return self.completion_mask.sum(dim=1).long()

    @property
    def num_completion_tokens(self) -> int:
        """T, the number of completion columns (what `scoring.completion_logprobs` takes as its last argument)."""
        return self.completion_ids.shape[1]


class RolloutEngine(Protocol):
    """What the trainer needs from a sampler."""

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> Rollouts:
        """One completion per entry of `prompt_ids` (unpadded token ids; the caller repeats each prompt G times).

        Randomness comes from torch's global RNG: the same seed and weights give the same rollouts.
        """
        ...

    def update_weights(self, model: torch.nn.Module) -> None:
        """Called after each optimizer step; engines sharing the module's parameters do nothing."""
        ...


# ---------------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------------


def _eos_list(eos_token_id: int | Sequence[int]) -> list[int]:
    return [int(eos_token_id)] if isinstance(eos_token_id, int) else [int(e) for e in eos_token_id]


def _left_pad(prompt_ids: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpadded prompts -> left-padded ids (B, Lp) and mask (B, Lp), built with one tensor constructor each."""
    if not prompt_ids:
        raise ValueError("generate() needs at least one prompt")
    lengths = [len(p) for p in prompt_ids]
    if min(lengths) == 0:
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    Lp = max(lengths)
    ids = torch.tensor(
        [[pad_id] * (Lp - n) + list(p) for p, n in zip(prompt_ids, lengths, strict=True)],
        dtype=torch.long,
        device=device,
    )  # (B, Lp)
    mask = torch.tensor([[0] * (Lp - n) + [1] * n for n in lengths], dtype=torch.long, device=device)  # (B, Lp)
    return ids, mask


def _finish(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    tokens: torch.Tensor,
    logp: torch.Tensor,
    eos_ids: torch.Tensor,
    pad_id: int,
) -> Rollouts:
    """Raw sampled tokens (B, T) and their log-probs (B, T) -> `Rollouts` with everything after the first EOS
    set to pad / mask 0 / log-prob 0 (the first EOS itself stays in the mask)."""
    is_eos = torch.isin(tokens, eos_ids).long()  # (B, T)
    after_eos = (is_eos.cumsum(dim=1) - is_eos) > 0  # (B, T): an EOS strictly before this column
    return Rollouts(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=tokens.masked_fill(after_eos, pad_id),
        completion_mask=(~after_eos).float(),
        sample_logp=logp.float().masked_fill(after_eos, 0.0),
    )


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering with exactly the semantics of HF `TopPLogitsWarper` (min_tokens_to_keep=1).

    scores (B, V) -> (B, V) with -inf outside the nucleus: tokens are sorted by ascending score and the ones whose
    cumulative probability is <= 1 - top_p are removed, the most likely token always kept.
    """
    sorted_scores, sorted_idx = torch.sort(scores, descending=False)  # (B, V)
    cum_probs = sorted_scores.softmax(dim=-1).cumsum(dim=-1)  # (B, V)
    remove_sorted = cum_probs <= (1 - top_p)  # (B, V)
    remove_sorted[..., -1:] = False
    remove = remove_sorted.scatter(1, sorted_idx, remove_sorted)  # back to vocabulary order
    return scores.masked_fill(remove, -math.inf)


def sample_next_token(logits: torch.Tensor, params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row: logits (B, V) -> tokens (B,) long, their log-probs (B,) float32.

    Same processing order as HF generate: temperature (scores / T), then top-p, then a draw from the softmax with
    the same random numbers as `torch.multinomial`, so the global RNG is consumed as HF consumes it (one (B, V)
    exponential draw per step). Greedy takes the first argmax and returns log_softmax(raw logits) at it.
    """
    scores = logits.float()
    if params.greedy:
        tokens = scores.argmax(dim=-1)  # (B,)
        return tokens, scores.log_softmax(dim=-1).gather(1, tokens[:, None]).squeeze(1)
    if params.temperature != 1.0:
        scores = scores / params.temperature
    if params.top_p < 1.0:
        scores = top_p_filter(scores, params.top_p)
    probs = scores.softmax(dim=-1)  # (B, V)
    # torch.multinomial(probs, 1) is this exponential race (argmax of p / q, q ~ Exp(1)) on every device; written
    # out, it skips multinomial's input validation (a device sync) and draws exactly the same random numbers.
    tokens = (probs / torch.empty_like(probs).exponential_()).argmax(dim=-1, keepdim=True)  # (B, 1)
    return tokens.squeeze(1), probs.gather(1, tokens).squeeze(1).log()


# ---------------------------------------------------------------------------------------------------------
# HFEngine
# ---------------------------------------------------------------------------------------------------------


class HFEngine:
    """`model.generate` with a KV cache: the reference engine, any causal LM."""

    def __init__(self, model: torch.nn.Module, *, eos_token_id: int | Sequence[int], pad_token_id: int) -> None:
        self.model = model
        self.eos_ids = _eos_list(eos_token_id)
        self.pad_id = int(pad_token_id)

    def _generation_kwargs(self, params: SamplingParams) -> dict[str, Any]:
        """Sampling arguments, plus neutral values for the processors a checkpoint's generation_config may turn on
        (HF fills every unset generate() argument from it), so that the sampled distribution is exactly
        softmax(logits / T) restricted to the top-p nucleus (greedy: argmax of the raw logits)."""
        kwargs: dict[str, Any] = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_length": 0}
        if params.greedy:
            return {**kwargs, "do_sample": False}
        kwargs.update(
            do_sample=True,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=0,
            typical_p=1.0,
            epsilon_cutoff=0.0,
            eta_cutoff=0.0,
        )
        if getattr(getattr(self.model, "generation_config", None), "min_p", None) is not None:
            kwargs["min_p"] = 0.0
        return kwargs

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> Rollouts:
        device = next(self.model.parameters()).device
        ids, mask = _left_pad(prompt_ids, self.pad_id, device)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=params.max_new_tokens,
                    eos_token_id=self.eos_ids,
                    pad_token_id=self.pad_id,
                    use_cache=True,
                    output_scores=True,
                    return_dict_in_generate=True,
                    **self._generation_kwargs(params),
                )
        finally:
            self.model.train(was_training)
        tokens = out.sequences[:, ids.shape[1] :]  # (B, T)
        scores = torch.stack(out.scores, dim=1).float()  # (B, T, V): processed logits the tokens were drawn from
        logp = scores.log_softmax(dim=-1).gather(-1, tokens[..., None]).squeeze(-1)  # (B, T)
        eos = torch.tensor(self.eos_ids, device=device)
        return _finish(ids, mask, tokens, logp, eos, self.pad_id)

    def update_weights(self, model: torch.nn.Module) -> None:
        """Nothing to do: `generate` runs on the live module."""


# ---------------------------------------------------------------------------------------------------------
# FastEngine
# ---------------------------------------------------------------------------------------------------------

FAST_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
# RoPE variants whose inverse frequencies do not depend on the sequence length: the HF rotary module's
# `inv_freq` and `attention_scaling` are then all we need. ("dynamic" and "longrope" rescale per length.)
FAST_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def _unsupported(why: str) -> ValueError:
    return ValueError(f"FastEngine does not support this model: {why}. Use engine 'hf' instead.")


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF LlamaRMSNorm (normalise in fp32, scale in the input dtype) in one fused op for fp32 models."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    return weight * F.rms_norm(x.float(), weight.shape, None, eps).to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """HF `x * cos + rotate_half(x) * sin`, with rotate_half(x) * sin == roll(x, D/2) * sin_signed."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin_signed)


def _cat_weight_t(mods: Sequence[torch.nn.Linear]) -> torch.Tensor:
    """Weights of one or more linears (outputs concatenated) as one contiguous (in, sum of outs) matrix: one
    matmul instead of several, and x @ W^T as a plain non-transposed GEMM, about 10% faster on this CPU."""
    return torch.cat([m.weight.t() for m in mods], dim=1)


def _cat_bias(mods: Sequence[torch.nn.Linear]) -> torch.Tensor | None:
    """Concatenated biases of linears whose outputs get concatenated (zeros for a linear without bias)."""
    if all(m.bias is None for m in mods):
        return None
    return torch.cat([m.bias if m.bias is not None else m.weight.new_zeros(m.out_features) for m in mods])


def _linear(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (N, in) @ weight_t (in, out) [+ bias]."""
    return torch.mm(x, weight_t) if bias is None else torch.addmm(bias, x, weight_t)


def _add_linear(
    residual: torch.Tensor, x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """residual + x @ weight_t [+ bias]: one addmm instead of a matmul and an add."""
    out = torch.addmm(residual, x, weight_t)
    return out if bias is None else out + bias


@dataclass
class _LayerWeights:
    """One decoder layer's weights for one `generate` call. Norm weights and biases are the module's own tensors;
    the matmul weights are transposed copies (q/k/v and gate/up concatenated), rebuilt at the start of every call,
    so optimizer updates made between calls are always seen."""

    ln_attn: torch.Tensor  # (H,)
    w_qkv: torch.Tensor  # (H, (Hq + 2 Hkv) D)
    b_qkv: torch.Tensor | None
    q_norm: torch.Tensor | None  # (D,) Qwen3 per-head RMSNorm weights, None otherwise
    k_norm: torch.Tensor | None  # (D,)
    w_o: torch.Tensor  # (Hq D, H)
    b_o: torch.Tensor | None
    ln_mlp: torch.Tensor  # (H,)
    w_gate_up: torch.Tensor  # (H, 2 I)
    b_gate_up: torch.Tensor | None
    w_down: torch.Tensor  # (I, H)
    b_down: torch.Tensor | None


class _LlamaFamilyDecoder:
    """Prefill + single-token decode of a Llama-family HF model over a preallocated KV cache.

    Reproduces the HF forward (RMSNorm, RoPE with the model's own inverse frequencies, GQA, optional q/k/v
    biases and Qwen3 q/k norms, SiLU-gated MLP, tied or untied lm_head) with a fraction of the Python and
    dispatch work: fused q/k/v and gate/up matmuls on pre-transposed weights, residual adds folded into addmm,
    and attention as two batched matmuls per layer, with GQA handled by grouping the query heads of each KV head
    (no repeated K/V). `begin` resolves the weights from the modules and allocates the cache; `prefill` and
    `step` return the next-token logits (B, V) in fp32. One call at a time: the per-call state lives on `self`.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        config = model.config
        model_type = getattr(config, "model_type", None)
        if model_type not in FAST_MODEL_TYPES:
            raise _unsupported(f"model_type {model_type!r} (supported: {', '.join(FAST_MODEL_TYPES)})")
        base = getattr(model, "model", None)
        if (
            base is None
            or not all(hasattr(base, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb"))
            or getattr(model, "lm_head", None) is None
        ):
            raise _unsupported(f"{type(model).__name__} does not have the LlamaForCausalLM module layout")
        if getattr(config, "hidden_act", "silu") != "silu":
            raise _unsupported(f"hidden_act {config.hidden_act!r} (only silu)")
        rope_type = getattr(base.rotary_emb, "rope_type", "default")
        if rope_type not in FAST_ROPE_TYPES:
            raise _unsupported(f"rope type {rope_type!r} (supported: {', '.join(FAST_ROPE_TYPES)})")
        self.model = model
        self.base = base
        attn = base.layers[0].self_attn
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.group = self.n_heads // self.n_kv_heads  # query heads per KV head
        self.head_dim = attn.head_dim
        self.scaling = float(attn.scaling)
        self.eps = float(base.norm.variance_epsilon)
        self.has_qk_norm = hasattr(attn, "q_norm")
        windows = [getattr(layer.self_attn, "sliding_window", None) for layer in base.layers]
        if model_type == "mistral":
            windows.append(getattr(config, "sliding_window", None))
        # A sliding window changes nothing while every sequence fits in it; `begin` checks the length.
        self.sliding_window: int | None = min((w for w in windows if w), default=None)

    # -- per call -------------------------------------------------------------------------------------------

    def begin(self, batch_size: int, max_len: int) -> None:
        """Resolve the weights from the modules (as they are now), allocate the KV cache and RoPE tables."""
        if self.sliding_window is not None and max_len > self.sliding_window:
            raise _unsupported(f"prompt + max_new_tokens = {max_len} exceeds the sliding window {self.sliding_window}")
        emb = self.base.embed_tokens.weight
        dtype, device = emb.dtype, emb.device
        self.w_emb = emb
        self.w_final_norm = self.base.norm.weight
        self.w_lm_head = self.model.lm_head.weight
        self.b_lm_head = getattr(self.model.lm_head, "bias", None)
        self.layers = [self._layer_weights(layer) for layer in self.base.layers]
        # Cache rows are (batch, kv head) pairs, so a layer's keys are one (B Hkv, Lmax, D) batch for bmm.
        shape = (batch_size * self.n_kv_heads, max_len, self.head_dim)
        self.k_cache = [torch.empty(shape, dtype=dtype, device=device) for _ in self.layers]  # (B Hkv, Lmax, D)
        self.v_cache = [torch.empty(shape, dtype=dtype, device=device) for _ in self.layers]  # (B Hkv, Lmax, D)
        # RoPE tables as HF computes them: angles = cat(pos * inv_freq, pos * inv_freq), times attention_scaling.
        rot = self.base.rotary_emb
        pos = torch.arange(max_len, device=device, dtype=torch.float32)
        freqs = pos[:, None] * rot.inv_freq.to(device=device, dtype=torch.float32)[None, :]  # (Lmax, D/2)
        angles = torch.cat([freqs, freqs], dim=-1)  # (Lmax, D)
        self.cos = (angles.cos() * rot.attention_scaling).to(dtype)  # (Lmax, D)
        sin = (angles.sin() * rot.attention_scaling).to(dtype)  # (Lmax, D)
        half = self.head_dim // 2
        self.sin_signed = torch.cat([-sin[:, :half], sin[:, half:]], dim=-1)  # (Lmax, D)
        # Additive key mask per cache row: -inf on prompt padding, 0 on real prompt tokens and generated slots.
        self.key_bias = torch.zeros((batch_size * self.n_kv_heads, 1, max_len), dtype=dtype, device=device)
        self.cur_len = 0

    def _layer_weights(self, layer: torch.nn.Module) -> _LayerWeights:
        attn, mlp = layer.self_attn, layer.mlp
        qkv = (attn.q_proj, attn.k_proj, attn.v_proj)
        return _LayerWeights(
            ln_attn=layer.input_layernorm.weight,
            w_qkv=_cat_weight_t(qkv),
            b_qkv=_cat_bias(qkv),
            q_norm=attn.q_norm.weight if self.has_qk_norm else None,
            k_norm=attn.k_norm.weight if self.has_qk_norm else None,
            w_o=_cat_weight_t((attn.o_proj,)),
            b_o=attn.o_proj.bias,
            ln_mlp=layer.post_attention_layernorm.weight,
            w_gate_up=_cat_weight_t((mlp.gate_proj, mlp.up_proj)),
            b_gate_up=_cat_bias((mlp.gate_proj, mlp.up_proj)),
            w_down=_cat_weight_t((mlp.down_proj,)),
            b_down=mlp.down_proj.bias,
        )

    def end(self) -> None:
        """Drop the per-call tensors (cache, concatenated weights) so they do not outlive the call."""
        for name in (
            "layers",
            "k_cache",
            "v_cache",
            "cos",
            "sin_signed",
            "key_bias",
            "w_emb",
            "w_final_norm",
            "w_lm_head",
            "b_lm_head",
        ):
            self.__dict__.pop(name, None)

    # -- forward --------------------------------------------------------------------------------------------

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Left-padded prompts ids (B, Lp), mask (B, Lp) -> next-token logits (B, V); fills cache slots [0, Lp)."""
        B, Lp = ids.shape
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, Lp) as HF generate
        valid = mask.bool()
        self.key_bias[:, 0, :Lp].masked_fill_(~valid.repeat_interleave(self.n_kv_heads, dim=0), -math.inf)
        causal = torch.ones((Lp, Lp), dtype=torch.bool, device=ids.device).tril()  # (Lp, Lp)
        # A padding query sees only itself, so no attention row is empty (an empty row would give NaN, which the
        # cache would carry into real rows through 0 * NaN); real queries never see padding keys.
        allowed = causal & (valid[:, None, :] | torch.eye(Lp, dtype=torch.bool, device=ids.device))  # (B, Lp, Lp)
        bias = torch.zeros((B, 1, 1, Lp, Lp), dtype=self.key_bias.dtype, device=ids.device)
        bias.masked_fill_(~allowed[:, None, None], -math.inf)
        # (B Hkv, group Lp, Lp): rows ordered (batch, kv head) x (query head in group, query position)
        bias = bias.expand(B, self.n_kv_heads, self.group, Lp, Lp).reshape(B * self.n_kv_heads, self.group * Lp, Lp)
        self.next_pos = pos[:, -1] + 1  # (B,) position of the first generated token
        return self._forward(ids, pos, bias)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row, tokens (B,) -> next-token logits (B, V)."""
        pos = self.next_pos[:, None]  # (B, 1)
        self.next_pos = self.next_pos + 1
        return self._forward(tokens[:, None], pos, self.key_bias[:, :, : self.cur_len + 1])  # bias (B Hkv, 1, S)

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """ids (B, L) at positions pos (B, L), written to cache slots [cur_len, cur_len + L), attending to slots
        [0, cur_len + L) with the additive mask `bias` (broadcastable to (B Hkv, group L, S)) -> logits (B, V) of
        the last position."""
        B, L = ids.shape
        Hq, Hkv, G, D = self.n_heads, self.n_kv_heads, self.group, self.head_dim
        s0, s1 = self.cur_len, self.cur_len + L
        cos = self.cos[pos][:, :, None]  # (B, L, 1, D)
        sin = self.sin_signed[pos][:, :, None]  # (B, L, 1, D)
        h = F.embedding(ids, self.w_emb).view(B * L, -1)  # (B L, H)
        for i, w in enumerate(self.layers):
            qkv = _linear(_rms_norm(h, w.ln_attn, self.eps), w.w_qkv, w.b_qkv).view(B, L, Hq + 2 * Hkv, D)
            q, k, v = qkv.split((Hq, Hkv, Hkv), dim=2)  # (B, L, heads, D) views
            if w.q_norm is not None:
                q, k = _rms_norm(q, w.q_norm, self.eps), _rms_norm(k, w.k_norm, self.eps)
            q = _rope(q, cos, sin)  # (B, L, Hq, D)
            self.k_cache[i].view(B, Hkv, -1, D)[:, :, s0:s1] = _rope(k, cos, sin).transpose(1, 2)
            self.v_cache[i].view(B, Hkv, -1, D)[:, :, s0:s1] = v.transpose(1, 2)
            q = q.transpose(1, 2).reshape(B * Hkv, G * L, D)  # a view when L == 1
            scores = torch.baddbmm(bias, q, self.k_cache[i][:, :s1].transpose(1, 2), alpha=self.scaling)
            probs = scores.softmax(dim=-1, dtype=torch.float32).to(scores.dtype)  # (B Hkv, G L, S)
            o = torch.bmm(probs, self.v_cache[i][:, :s1]).view(B, Hq, L, D)
            h = _add_linear(h, o.transpose(1, 2).reshape(B * L, Hq * D), w.w_o, w.b_o)
            gate, up = _linear(_rms_norm(h, w.ln_mlp, self.eps), w.w_gate_up, w.b_gate_up).chunk(2, dim=-1)
            h = _add_linear(h, F.silu(gate) * up, w.w_down, w.b_down)  # (B L, H)
        self.cur_len = s1
        last = h.view(B, L, -1)[:, -1]  # (B, H)
        return F.linear(_rms_norm(last, self.w_final_norm, self.eps), self.w_lm_head, self.b_lm_head).float()


class FastEngine:
    """Sampling loop over a compact Llama-family forward with a preallocated KV cache.

    Same distribution as `HFEngine` and, for the same logits, the same random numbers (the draw of
    `torch.multinomial`, one (B, V) exponential sample per step), with far less Python and dispatch work per
    step. The weights are read from the HF modules at the start of every `generate` call, so `update_weights`
    has nothing to do. Raises `ValueError` for models it does not implement (the trainer's engine "auto" then
    falls back to "hf").

    No torch.compile: on the 2-core CPU benchmark an inductor-compiled decode step was slower (dynamic shapes)
    or within noise (static-shape cache) after a 17-80 s compile; see docs/engine_bench.md.
    """

    def __init__(self, model: torch.nn.Module, *, eos_token_id: int | Sequence[int], pad_token_id: int) -> None:
        self.model = model
        self.eos_ids = _eos_list(eos_token_id)
        self.pad_id = int(pad_token_id)
        self.decoder = _LlamaFamilyDecoder(model)

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> Rollouts:
        dec = self.decoder
        device = next(self.model.parameters()).device
        ids, mask = _left_pad(prompt_ids, self.pad_id, device)
        B, N = ids.shape[0], params.max_new_tokens
        eos = torch.tensor(self.eos_ids, device=device)
        tokens = torch.full((B, N), self.pad_id, dtype=torch.long, device=device)  # (B, N)
        logp = torch.zeros((B, N), dtype=torch.float32, device=device)  # (B, N)
        finished = torch.zeros(B, dtype=torch.bool, device=device)  # (B,)
        T = N
        with torch.inference_mode():
            dec.begin(B, ids.shape[1] + N)
            try:
                logits = dec.prefill(ids, mask)
                for t in range(N):
                    tok, lp = sample_next_token(logits, params)
                    tokens[:, t], logp[:, t] = tok, lp
                    finished |= torch.isin(tok, eos)
                    if t == N - 1:
                        break
                    if bool(finished.all()):
                        T = t + 1
                        break
                    # Finished rows keep decoding their own samples; `_finish` masks them out.
                    logits = dec.step(tok)
            finally:
                dec.end()
        return _finish(ids, mask, tokens[:, :T], logp[:, :T], eos, self.pad_id)

    def update_weights(self, model: torch.nn.Module) -> None:
        """Nothing to do: the weights are read from the live modules at every `generate` call."""


# ---------------------------------------------------------------------------------------------------------
# VLLMEngine
# ---------------------------------------------------------------------------------------------------------


class VLLMEngine:
    """vLLM on a GPU worker (requirements/gpu.txt, a separate environment from the CPU set-up).

    vllm is imported in the constructor only, never at module import. Sampling log-probs: vLLM's V1 engine returns
    raw log-probs (before temperature / top-p) unless `logprobs_mode="processed_logprobs"`, which is passed by
    default; vLLM versions without that option (before 0.10.2) get a warning, and their `sample_logp` is then the
    raw model log-prob (equal to the sampling one only at temperature 1, top-p 1).
    """

    def __init__(
        self,
        model_path: str,
        *,
        eos_token_id: int | Sequence[int],
        pad_token_id: int,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.5,
        seed: int = 0,
        **llm_kwargs: Any,
    ) -> None:
        try:
            import vllm
        except ImportError as e:
            raise RuntimeError(VLLM_MISSING) from e
        self._vllm = vllm
        self.eos_ids = _eos_list(eos_token_id)
        self.pad_id = int(pad_token_id)
        kwargs = {
            "model": model_path,
            "dtype": dtype,
            "gpu_memory_utilization": gpu_memory_utilization,
            "seed": seed,
            **llm_kwargs,
        }
        try:
            self.llm = vllm.LLM(**{"logprobs_mode": "processed_logprobs", **kwargs})
        except TypeError:  # vLLM < 0.10.2 has no logprobs_mode
            warnings.warn(
                "this vLLM has no logprobs_mode: sample_logp will be raw model log-probs", RuntimeWarning, stacklevel=2
            )
            self.llm = vllm.LLM(**kwargs)

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> Rollouts:
        ids, mask = _left_pad(prompt_ids, self.pad_id, torch.device("cpu"))
        vp = self._vllm.SamplingParams(
            n=1,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            logprobs=0,
            stop_token_ids=self.eos_ids,
            detokenize=False,
        )
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompt_ids], vp, use_tqdm=False)
        comps = [o.outputs[0] for o in outs]
        lengths = torch.tensor([len(c.token_ids) for c in comps])  # (B,)
        T = int(lengths.max())
        tokens = torch.full((len(comps), T), self.pad_id, dtype=torch.long)  # (B, T)
        logp = torch.zeros((len(comps), T), dtype=torch.float32)  # (B, T)
        for i, c in enumerate(comps):
            n = len(c.token_ids)
            tokens[i, :n] = torch.tensor(list(c.token_ids), dtype=torch.long)
            # logprobs=0: per position, a {token id: Logprob} dict holding the sampled token
            logp[i, :n] = torch.tensor([step[t].logprob for t, step in zip(c.token_ids, c.logprobs, strict=True)])
        rollouts = _finish(ids, mask, tokens, logp, torch.tensor(self.eos_ids), self.pad_id)
        # A row that ended without an EOS token in its output (a stop vLLM strips) is shorter than T.
        within = (torch.arange(T)[None, :] < lengths[:, None]).float()  # (B, T)
        rollouts.completion_mask = rollouts.completion_mask * within
        rollouts.sample_logp = rollouts.sample_logp * within
        return rollouts

    def update_weights(self, model: torch.nn.Module) -> None:
        """Load the trained weights into vLLM's model. Best effort and version-dependent: `LLM.apply_model`
        where it exists (recent vLLM; with V1 multiprocessing the weights are pickled to the engine process, so
        set VLLM_ENABLE_V1_MULTIPROCESSING=0 to share the process), else the V0 driver-worker path that TRL
        used. The prefix cache is reset, as its KV blocks were computed by the old weights."""
        weights = [(name, t.detach()) for name, t in model.state_dict().items()]
        if hasattr(self.llm, "apply_model"):
            self.llm.apply_model(lambda m: m.load_weights(weights))
        else:
            self.llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(weights)
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()


# ---------------------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------------------


def make_engine(
    name: Literal["hf", "fast", "vllm"],
    model: Any,
    *,
    eos_token_id: int,
    pad_token_id: int,
    **options: Any,
) -> RolloutEngine:
    """Build a rollout engine. `model` is the HF module for "hf"/"fast" and a model path (or a module whose
    `name_or_path` is used) for "vllm"; `options` go to the engine's constructor."""
    if name == "hf":
        return HFEngine(model, eos_token_id=eos_token_id, pad_token_id=pad_token_id, **options)
    if name == "fast":
        return FastEngine(model, eos_token_id=eos_token_id, pad_token_id=pad_token_id, **options)
    if name == "vllm":
        path = model if isinstance(model, str) else model.name_or_path
        return VLLMEngine(path, eos_token_id=eos_token_id, pad_token_id=pad_token_id, **options)
    raise ValueError(f"unknown rollout engine {name!r}; choose 'hf', 'fast' or 'vllm'")
