"""What a run will hold in device memory, estimated from the models' configs before any weight is loaded.

Per process, in bytes:

    weights      student + teacher + reference parameters (FSDP: the student's shard; a sharded teacher's; a
                 teacher on another device (`teacher_device`) is not counted)
    gradients    one per trainable student parameter, in its dtype
    optimizer    AdamW's two moments per trainable parameter, in its dtype; a half-precision student (one
                 process or DDP) adds fp32 masters and keeps the moments and a gradient copy in fp32 (under
                 FSDP the fp32 shards are the masters: weights, gradients and moments in fp32, 1/N each)
    rollout      the KV cache of this process's rollout rows (prompt + max_new_tokens) + their last logits (the
                 fast and hf engines sample the whole batch at once; vLLM's own cache is not counted)
    update       a micro-batch's activations (every layer's, or with gradient checkpointing one input per
                 layer + one layer's) + its logits (fp32 and their gradient: (micro, T, V), or a vocabulary
                 chunk) ; the teacher's and old policy's scoring passes need less and are covered by it

The peak is weights + gradients + optimizer + the larger of rollout and update, plus a fixed allowance for the
runtime (CUDA context, allocator slack). Parameter counts are exact for Llama-family configs (attention with
grouped KV heads, gated MLP, RMSNorm) and close for their relatives (Qwen, Mistral); activations follow the
usual per-token accounting (about 10 H + 4 I values per layer and token without checkpointing). It is an
estimate: `memory_check: false` skips the refusal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}
RUNTIME_BYTES = 1 << 30  # CUDA context, allocator fragmentation, the framework's own tensors
GIB = float(1 << 30)


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a model's config."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool

    @classmethod
    def from_config(cls, cfg: Any) -> Shape:
        cfg = getattr(cfg, "text_config", None) or cfg
        heads = int(cfg.num_attention_heads)
        return cls(
            vocab=int(cfg.vocab_size),
            hidden=int(cfg.hidden_size),
            layers=int(cfg.num_hidden_layers),
            heads=heads,
            kv_heads=int(getattr(cfg, "num_key_value_heads", None) or heads),
            head_dim=int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads),
            intermediate=int(getattr(cfg, "intermediate_size", None) or 4 * cfg.hidden_size),
            tied=bool(getattr(cfg, "tie_word_embeddings", False)),
        )

    @property
    def params(self) -> int:
        H, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        per_layer = H * q + 2 * H * kv + q * H + 3 * H * self.intermediate + 2 * H  # attention, MLP, 2 norms
        return self.vocab * H * (1 if self.tied else 2) + self.layers * per_layer + H  # + the final norm


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer: int
    rollout: int
    update: int
    runtime: int = RUNTIME_BYTES

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + max(self.rollout, self.update) + self.runtime

    def parts(self) -> dict[str, float]:
        """GiB per part and the total (what the `started` event and the error show)."""
        names = ("weights", "gradients", "optimizer", "rollout", "update", "runtime")
        out = {name: float(f"{getattr(self, name) / GIB:.4g}") for name in names}
        out["total"] = float(f"{self.total / GIB:.4g}")
        return out


def estimate(
    config: Any,
    *,
    student: Shape,
    teacher: Shape | None,
    reference: bool,
    prompt_tokens: int,
    world_size: int = 1,
    vocab_chunk: int | None = None,
) -> MemoryEstimate:
    """The per-process estimate of a run of `config` (a TrainConfig); `prompt_tokens`: the longest prompt."""
    b = DTYPE_BYTES[config.dtype]
    sharded = world_size > 1 and config.strategy == "fsdp"
    share = world_size if sharded else 1
    student_bytes = student.params * b
    weights = student_bytes // share
    if config.teacher_device in (None, "auto"):  # a teacher offloaded to another device is not counted here
        tb = DTYPE_BYTES[config.teacher_dtype or config.dtype]
        frozen_share = share if config.teacher_sharding == "shard" else 1
        weights += (student.params * tb if reference else 0) // frozen_share
        weights += (teacher.params * tb if teacher is not None else 0) // frozen_share
    gradients = student_bytes // share
    optimizer = 2 * student_bytes // share
    if config.lora is not None:  # only the adapters train: their gradients and moments are small
        gradients = optimizer = 0
    elif b < 4 and not sharded:  # fp32 masters (rlad_core.precision): fp32 moments, the masters, fp32 gradients
        optimizer = 3 * student.params * 4
        gradients += student.params * 4
    elif b < 4:  # FSDP's fp32 shards are the masters: fp32 weights, gradients and moments, each 1/N
        weights += student.params * (4 - b) // share
        gradients = student.params * 4 // share
        optimizer = 2 * student.params * 4 // share

    T, S = config.max_new_tokens, prompt_tokens + config.max_new_tokens
    rows = config.batch_size // world_size
    kv = rows * S * student.layers * 2 * student.kv_heads * student.head_dim * b
    rollout = kv + rows * student.vocab * 4  # the sampled position's fp32 logits
    if config.engine == "vllm":
        rollout = 0  # vLLM allocates its KV cache itself (its gpu_memory_utilization share), not counted here

    micro = min(config.resolved_micro_batch_size, max(1, rows))  # rows per forward/backward on each process
    per_layer_token = 10 * student.hidden + 4 * student.intermediate
    if config.gradient_checkpointing:
        acts = micro * S * (student.layers * student.hidden + per_layer_token) * b
    else:
        acts = micro * S * student.layers * per_layer_token * b
    vocab_cols = min(vocab_chunk, student.vocab) if vocab_chunk else student.vocab
    logits = micro * T * vocab_cols * (4 + 4 + b)  # fp32 logits, their gradient, the model-dtype matmul output
    return MemoryEstimate(weights, gradients, optimizer, rollout, acts + logits)


def device_capacity(device: str) -> int | None:
    """Bytes free for the run on `device` now: CUDA's free memory, or the host's available memory for CPU
    (Linux); None where it cannot be known."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    if device == "cpu":
        try:
            with open("/proc/meminfo") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def fixes(config: Any, est: MemoryEstimate) -> list[str]:
    """What would lower the estimate, biggest part first."""
    out = []
    if est.update >= est.rollout:
        if not config.gradient_checkpointing:
            out.append("gradient_checkpointing: true")
        out.append("a smaller micro_batch_size")
        if config.logprob_vocab_chunk is None:
            out.append("logprob_vocab_chunk: auto")
    else:
        out.append("a smaller batch_size or max_new_tokens (the rollouts' KV cache)")
    if config.dtype in ("float32", "float64"):
        out.append("dtype: bfloat16")
    if est.weights + est.gradients + est.optimizer > max(est.rollout, est.update):
        out.append("more processes with strategy: fsdp")
    return out
