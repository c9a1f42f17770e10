"""Sampled-token log-probabilities of any causal LM on given sequences (student, old policy, teacher, reference).

One batched forward per call. Only the last T + 1 positions get logits (`logits_to_keep`), and the
full-vocabulary tensor lives only inside this function: what leaves it is (B, T). The log-softmax is computed
in fp32 whatever the model's dtype.

With `vocab_chunk`, not even that tensor exists: the model returns its last hidden states, and the output
head is applied `vocab_chunk` vocabulary entries at a time (`VocabChunkedLogprob`), the log-sum-exp
accumulated over the chunks, and the backward recomputes each chunk's logits instead of keeping them: the
memory is (B, T, vocab_chunk) fp32 instead of (B, T, V) fp32, which for a 150k vocabulary is most of an
update's activations.
"""

from __future__ import annotations

import torch


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as Hugging Face `generate` computes them: (B, L) -> (B, L)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def completion_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    num_completion_tokens: int,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    vocab_chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of each of the last T tokens of `input_ids` given everything before it.

    input_ids, attention_mask: (B, L) = prompt (left-padded) + completion (T = num_completion_tokens).
    Returns logp (B, T) and, if asked, the entropy (B, T) of the predictive distribution (no gradient).
    Logits are divided by `temperature`, so the log-probs are those of the distribution the engine
    sampled from (with top-p = 1). Runs with or without autograd, as the caller's context decides.
    `vocab_chunk`: apply the output head that many vocabulary entries at a time (module docstring); the
    same values (to rounding), far less memory.
    """
    T = num_completion_tokens
    if vocab_chunk is not None:
        return _chunked_completion_logprobs(
            model, input_ids, attention_mask, T, temperature=temperature, with_entropy=with_entropy, chunk=vocab_chunk
        )
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=T + 1,
        use_cache=False,
    )
    logits = out.logits[:, :-1, :]  # (B, T, V): position t predicts completion token t
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()  # log-softmax in fp32: bf16 log-probs are too coarse for ratios near 1
    if temperature != 1.0:
        logits = logits / temperature
    targets = input_ids[:, -T:]  # (B, T)
    # gather - logsumexp == log_softmax at the target, without a second (B, T, V) tensor
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # (B, T)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            logp_full = torch.log_softmax(logits.detach(), dim=-1)
            entropy = -(logp_full.exp() * logp_full).sum(-1)  # (B, T)
    return logp, entropy


def output_head(model: torch.nn.Module) -> torch.nn.Module:
    """The output projection (lm_head) of a causal LM, through a DDP wrapper."""
    inner = getattr(model, "module", model)  # DistributedDataParallel keeps the model in .module
    head = inner.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise ValueError(f"{type(inner).__name__} has no output head to chunk; fix: set logprob_vocab_chunk to null")
    return head


def _chunked_completion_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    T: int,
    *,
    temperature: float,
    with_entropy: bool,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    head = output_head(model)
    # through the model's own forward (DDP's hooks run), logits for one position only; the last hidden states
    # (after the final norm) are what the head turns into logits
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=1,
        output_hidden_states=True,
        use_cache=False,
    )
    hidden = out.hidden_states[-1][:, -(T + 1) : -1, :]  # (B, T, H): position t predicts completion token t
    B, _, H = hidden.shape
    targets = input_ids[:, -T:].reshape(-1)  # (B*T,)
    flat = hidden.reshape(B * T, H)
    bias = getattr(head, "bias", None)
    logp = VocabChunkedLogprob.apply(flat, head.weight, bias, targets, temperature, chunk).view(B, T)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = _chunked_entropy(flat.detach(), head.weight.detach(), bias, temperature, chunk).view(B, T)
    return logp, entropy


def _chunk_logits(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, v0: int, v1: int, temperature: float
) -> torch.Tensor:
    """fp32 logits of vocabulary entries v0..v1-1: (N, H) -> (N, v1 - v0); the matmul in the model's dtype, as
    the head computes it."""
    logits = hidden @ weight[v0:v1].T
    if bias is not None:
        logits = logits + bias[v0:v1]
    logits = logits.to(_acc_dtype(logits.dtype))
    return logits / temperature if temperature != 1.0 else logits


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Where the log-softmax math runs: fp32, or fp64 for an fp64 model (exactness checks)."""
    return torch.promote_types(dtype, torch.float32)


def _logsumexp_chunked(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float, chunk: int
) -> torch.Tensor:
    lse = torch.full((hidden.shape[0],), float("-inf"), dtype=_acc_dtype(hidden.dtype), device=hidden.device)
    for v0 in range(0, weight.shape[0], chunk):
        lse = torch.logaddexp(
            lse, torch.logsumexp(_chunk_logits(hidden, weight, bias, v0, v0 + chunk, temperature), -1)
        )
    return lse


def _chunked_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float, chunk: int
) -> torch.Tensor:
    """H = lse - sum_v p_v z_v, over vocabulary chunks (two passes: the log-sum-exp first)."""
    lse = _logsumexp_chunked(hidden, weight, bias, temperature, chunk)
    expected = torch.zeros_like(lse)
    for v0 in range(0, weight.shape[0], chunk):
        z = _chunk_logits(hidden, weight, bias, v0, v0 + chunk, temperature)
        expected += (torch.exp(z - lse[:, None]) * z).sum(-1)
    return lse - expected


class VocabChunkedLogprob(torch.autograd.Function):
    """log softmax((h W^T + b) / temperature)[target] over the vocabulary in chunks: (N, H) -> (N,), fp32 (fp64
    for an fp64 model).

    Forward keeps only the running log-sum-exp and the target logits; backward recomputes each chunk's logits
    and uses d logp / d z_v = [v = target] - softmax_v, so neither pass holds more than (N, chunk) logits."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        temperature: float,
        chunk: int,
    ) -> torch.Tensor:
        lse = torch.full((hidden.shape[0],), float("-inf"), dtype=_acc_dtype(hidden.dtype), device=hidden.device)
        target_logit = torch.zeros_like(lse)
        for v0 in range(0, weight.shape[0], chunk):
            z = _chunk_logits(hidden, weight, bias, v0, v0 + chunk, temperature)
            lse = torch.logaddexp(lse, torch.logsumexp(z, -1))
            local = targets - v0
            hit = (local >= 0) & (local < z.shape[1])
            picked = z.gather(1, local.clamp(0, z.shape[1] - 1)[:, None]).squeeze(1)
            target_logit = torch.where(hit, picked, target_logit)
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.temperature, ctx.chunk = temperature, chunk  # type: ignore[attr-defined]
        return target_logit - lse

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        hidden, weight, bias, targets, lse = ctx.saved_tensors  # type: ignore[attr-defined]
        temperature, chunk = ctx.temperature, ctx.chunk  # type: ignore[attr-defined]
        need_h, need_w, need_b = ctx.needs_input_grad[:3]  # type: ignore[attr-defined]
        acc = _acc_dtype(hidden.dtype)
        grad_h = torch.zeros(hidden.shape, dtype=acc, device=hidden.device) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b and bias is not None else None
        grad = grad.to(acc)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        for v0 in range(0, weight.shape[0], chunk):
            z = _chunk_logits(hidden, weight, bias, v0, v0 + chunk, temperature)
            g = -grad[:, None] * torch.exp(z - lse[:, None])  # d(-lse)/dz
            local = targets - v0
            hit = (local >= 0) & (local < z.shape[1])
            g[rows[hit], local[hit]] += grad[hit]  # d(z_target)/dz
            if temperature != 1.0:
                g = g / temperature
            if grad_h is not None:
                grad_h += (g.to(weight.dtype) @ weight[v0 : v0 + chunk]).to(acc)
            if grad_w is not None:
                grad_w[v0 : v0 + chunk] = (g.T @ hidden.to(acc)).to(weight.dtype)
            if grad_b is not None:
                grad_b[v0 : v0 + chunk] = g.sum(0).to(bias.dtype)
        return (
            grad_h.to(hidden.dtype) if grad_h is not None else None,
            grad_w,
            grad_b,
            None,
            None,
            None,
        )


def score_in_chunks(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    num_completion_tokens: int,
    *,
    chunk_size: int,
    temperature: float = 1.0,
    vocab_chunk: int | None = None,
) -> torch.Tensor:
    """`completion_logprobs` without gradient over row chunks of at most `chunk_size`: (B, L) -> (B, T).

    Runs under `inference_mode` (no autograd bookkeeping at all); the result is cloned out of it so that the
    loss may use it next to tensors that carry gradients. A model on another device than the rows (a teacher
    offloaded to the CPU or on another GPU) gets them there; the log-probs come back to the rows' device.
    """
    where = next(model.parameters()).device
    ids, mask = input_ids.to(where), attention_mask.to(where)
    with torch.inference_mode():
        parts = [
            completion_logprobs(
                model,
                ids[i : i + chunk_size],
                mask[i : i + chunk_size],
                num_completion_tokens,
                temperature=temperature,
                vocab_chunk=vocab_chunk,
            )[0]
            for i in range(0, input_ids.shape[0], chunk_size)
        ]
        out = torch.cat(parts, dim=0)
    return out.to(input_ids.device).clone()
