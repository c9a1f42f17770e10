"""Sampled-token log-probabilities of any causal LM on given sequences (student, old policy, teacher, reference).

One batched forward per call. Only the last T + 1 positions get logits (`logits_to_keep`), and the
full-vocabulary tensor lives only inside this function: what leaves it is (B, T).
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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of each of the last T tokens of `input_ids` given everything before it.

    input_ids, attention_mask: (B, L) = prompt (left-padded) + completion (T = num_completion_tokens).
    Returns logp (B, T) and, if asked, the entropy (B, T) of the predictive distribution (no gradient).
    Logits are divided by `temperature`, so the log-probs are those of the distribution the engine
    sampled from (with top-p = 1). Runs with or without autograd, as the caller's context decides.
    """
    T = num_completion_tokens
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


def score_in_chunks(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    num_completion_tokens: int,
    *,
    chunk_size: int,
    temperature: float = 1.0,
) -> torch.Tensor:
    """`completion_logprobs` without gradient over row chunks of at most `chunk_size`: (B, L) -> (B, T).

    Runs under `inference_mode` (no autograd bookkeeping at all); the result is cloned out of it so that the
    loss may use it next to tensors that carry gradients.
    """
    with torch.inference_mode():
        parts = [
            completion_logprobs(
                model,
                input_ids[i : i + chunk_size],
                attention_mask[i : i + chunk_size],
                num_completion_tokens,
                temperature=temperature,
            )[0]
            for i in range(0, input_ids.shape[0], chunk_size)
        ]
        out = torch.cat(parts, dim=0)
    return out.clone()
