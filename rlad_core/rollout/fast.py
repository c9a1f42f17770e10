"""`FastEngine`: a compact decoder forward for Llama-family architectures over a preallocated KV cache."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlad_core.rollout.base import (
    Rollouts,
    SamplingParams,
    eos_list,
    finish_rollouts,
    left_pad,
    row_generators,
    sample_next_token,
)

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


def _weight(m: torch.nn.Module) -> torch.Tensor:
    """A linear's weight as its forward applies it: for a LoRA layer (peft), the base weight plus its active
    adapters' scaled deltas B A (unless they are merged into it already)."""
    base = getattr(m, "base_layer", None)
    if base is None or not hasattr(m, "get_delta_weight"):
        return m.weight
    w = base.weight
    if getattr(m, "merged", False) or getattr(m, "disable_adapters", False):
        return w
    for name in m.active_adapters:
        if name in m.lora_A:
            w = w + m.get_delta_weight(name)
    return w


def _cat_weight_t(mods: Sequence[torch.nn.Module]) -> torch.Tensor:
    """Weights of one or more linears (outputs concatenated) as one contiguous (in, sum of outs) matrix: one
    matmul instead of several, and x @ W^T as a plain non-transposed GEMM, about 10% faster on this CPU."""
    return torch.cat([_weight(m).t() for m in mods], dim=1)


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
        if hasattr(model, "get_base_model"):  # a peft model: the causal LM inside, its LoRA layers in place
            model = model.get_base_model()
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
        self.eos_ids = eos_list(eos_token_id)
        self.pad_id = int(pad_token_id)
        self.decoder = _LlamaFamilyDecoder(model)

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> Rollouts:
        dec = self.decoder
        device = next(self.model.parameters()).device
        ids, mask = left_pad(prompt_ids, self.pad_id, device)
        B, N = ids.shape[0], params.max_new_tokens
        eos = torch.tensor(self.eos_ids, device=device)
        tokens = torch.full((B, N), self.pad_id, dtype=torch.long, device=device)  # (B, N)
        logp = torch.zeros((B, N), dtype=torch.float32, device=device)  # (B, N)
        finished = torch.zeros(B, dtype=torch.bool, device=device)  # (B,)
        if params.seeds is not None and len(params.seeds) != B:
            raise ValueError(f"{len(params.seeds)} sampling seeds for {B} prompts; give one seed per prompt row")
        generators = row_generators(params.seeds, device) if params.seeds is not None else None
        T = N
        with torch.inference_mode():
            dec.begin(B, ids.shape[1] + N)
            try:
                logits = dec.prefill(ids, mask)
                for t in range(N):
                    tok, lp = sample_next_token(logits, params, generators)
                    tokens[:, t], logp[:, t] = tok, lp
                    finished |= torch.isin(tok, eos)
                    if t == N - 1:
                        break
                    if bool(finished.all()):
                        T = t + 1
                        break
                    # Finished rows keep decoding their own samples; `finish_rollouts` masks them out.
                    logits = dec.step(tok)
            finally:
                dec.end()
        return finish_rollouts(ids, mask, tokens[:, :T], logp[:, :T], eos, self.pad_id)

    def update_weights(self, model: torch.nn.Module) -> None:
        """Nothing to do: the weights are read from the live modules at every `generate` call."""
