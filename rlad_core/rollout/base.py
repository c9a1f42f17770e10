"""What every rollout engine shares: `SamplingParams`, the `Rollouts` they return, the `RolloutEngine`
protocol, and the sampling step (`sample_next_token`, `top_p_filter`) that `HFEngine` and `FastEngine` share
so that, for the same logits, they draw the same tokens."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: `temperature == 0` means greedy (then `top_p` is ignored)."""

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    # one random stream per row: row i draws from a generator seeded with seeds[i], so a row's sample does not
    # depend on which rows share its batch (the same rollouts on 1 process or N); None: the global RNG
    seeds: tuple[int, ...] | None = None

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


def eos_list(eos_token_id: int | Sequence[int]) -> list[int]:
    return [int(eos_token_id)] if isinstance(eos_token_id, int) else [int(e) for e in eos_token_id]


def left_pad(prompt_ids: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
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


def finish_rollouts(
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


def row_generators(seeds: Sequence[int], device: torch.device) -> list[torch.Generator]:
    """One generator per row for `SamplingParams.seeds`."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def sample_next_token(
    logits: torch.Tensor, params: SamplingParams, generators: Sequence[torch.Generator] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row: logits (B, V) -> tokens (B,) long, their log-probs (B,) float32.

    Same processing order as HF generate: temperature (scores / T), then top-p, then a draw from the softmax with
    the same random numbers as `torch.multinomial`, so the global RNG is consumed as HF consumes it (one (B, V)
    exponential draw per step). With `generators` (one per row) row i draws its (V,) exponentials from its own
    generator instead. Greedy takes the first argmax and returns log_softmax(raw logits) at it.
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
    if generators is None:
        noise = torch.empty_like(probs).exponential_()  # (B, V)
    else:
        noise = torch.stack([torch.empty_like(probs[0]).exponential_(generator=g) for g in generators])  # (B, V)
    tokens = (probs / noise).argmax(dim=-1, keepdim=True)  # (B, 1)
    return tokens.squeeze(1), probs.gather(1, tokens).squeeze(1).log()
