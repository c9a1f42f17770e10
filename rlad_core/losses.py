"""Loss functions of RLAD (TRRD) and its baselines: pure functions over tensors.

Spec: `shared/RLAD.md` (Zhang et al., "Reinforcement-aware Knowledge Distillation for LLM Reasoning",
arXiv 2602.22495). Every function takes tensors and plain values and returns `(loss, metrics)`: a scalar
tensor to minimise and a dict of Python floats. No config objects, no devices, no `self`.

Shape glossary
    B  responses in the batch (P prompts x G responses per prompt, grouped: response i belongs to prompt i // G)
    T  completion tokens (padded)
Inputs
    logp          (B, T)  log pi_S(y_t)      current student, carries the gradient
    old_logp      (B, T)  log pi_S_old(y_t)  student that sampled the rollout (no gradient)
    teacher_logp  (B, T)  log pi_T(y_t)      teacher on the student's sampled tokens (no gradient)
    ref_logp      (B, T)  log pi_ref(y_t)    frozen reference (optional, no gradient)
    advantages    (B,)    one advantage per response, broadcast over its tokens
    mask          (B, T)  1.0 on completion tokens (up to and including EOS), 0.0 on padding
"""

from __future__ import annotations

from collections.abc import Callable
from typing import get_args

import torch

# The choices are defined once, in the (torch-free) config module, and only imported here.
from rlad_core.config import AdvantageScale, Aggregation, KLEstimator, StdKind, TeacherClampGrad

AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)
KL_ESTIMATORS: tuple[str, ...] = get_args(KLEstimator)
TEACHER_CLAMP_GRADS: tuple[str, ...] = get_args(TeacherClampGrad)

Metrics = dict[str, float]


# ---------------------------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------------------------


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    eps: float = 1e-6,
    std: StdKind = "population",
    scale: AdvantageScale = "group",
) -> torch.Tensor:
    """GRPO group-relative advantage: `A_i = (R_i - mean_G R) / (std_G R + eps)` (RLAD.md, Eq. 1).

    rewards (B,), ordered group by group (B = P * G) -> advantages (B,).
    `std="population"` divides by G (the paper), `"unbiased"` by G - 1. `scale="none"` only centres the
    rewards (Dr.GRPO). A group whose rewards are all equal gets advantage exactly 0: the test is done on the
    rewards themselves, because the float mean of equal values need not equal them bit for bit.
    """
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"rewards of size {rewards.numel()} cannot be split into groups of {group_size}")
    rewards_PG = rewards.reshape(-1, group_size)  # (P, G)
    centred_PG = rewards_PG - rewards_PG.mean(dim=1, keepdim=True)
    all_equal_P1 = (rewards_PG == rewards_PG[:, :1]).all(dim=1, keepdim=True)
    centred_PG = torch.where(all_equal_P1, torch.zeros_like(centred_PG), centred_PG)
    if scale == "none":
        return centred_PG.reshape(-1)
    if scale != "group":
        raise ValueError(f"scale must be 'group' or 'none', got {scale!r}")
    if std not in ("population", "unbiased"):
        raise ValueError(f"std must be 'population' or 'unbiased', got {std!r}")
    std_P1 = rewards_PG.std(dim=1, keepdim=True, correction=1 if std == "unbiased" else 0)
    return (centred_PG / (std_P1 + eps)).reshape(-1)


# ---------------------------------------------------------------------------------------------------------
# Reductions and estimators
# ---------------------------------------------------------------------------------------------------------


def aggregate(
    per_token: torch.Tensor, mask: torch.Tensor, aggregation: Aggregation, *, max_len: int | None = None
) -> torch.Tensor:
    """Reduce a (B, T) per-token loss to a scalar over the masked tokens.

    - "seq-mean-token-mean": mean over each response's tokens, then mean over responses (the paper, GRPO).
    - "token-mean": sum over all tokens / number of tokens (DAPO).
    - "seq-mean-token-sum-norm": sum over all tokens / (B * max_len) (Dr.GRPO's constant normaliser). Pass the
      configured max_new_tokens as `max_len`: the batch is only padded to its longest completion, so its T
      changes from step to step; `max_len=None` falls back to the padded length T.
    Padded positions are selected away, not multiplied by 0, so an inf/nan there cannot poison the loss value.
    """
    masked = torch.where(mask > 0, per_token, 0.0)  # (B, T); inf * 0 would be nan
    if aggregation == "seq-mean-token-mean":
        return (masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).mean()
    if aggregation == "token-mean":
        return masked.sum() / mask.sum().clamp(min=1.0)
    if aggregation == "seq-mean-token-sum-norm":
        T = mask.shape[1]
        if max_len is not None and max_len < T:
            raise ValueError(f"max_len {max_len} is shorter than the batch's {T} completion tokens")
        return masked.sum() / (mask.shape[0] * (T if max_len is None else max_len))
    raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {AGGREGATIONS}")


def microbatch_weight(mask_mb: torch.Tensor, mask_full: torch.Tensor, aggregation: Aggregation) -> float:
    """Factor that turns a micro-batch's aggregated loss into its share of the full batch's loss.

    With gradient accumulation, `sum_mb weight_mb * aggregate(loss_mb)` equals `aggregate(loss_full)`
    exactly when the micro-batches partition the rows of the full (B, T) batch (and, for
    "seq-mean-token-sum-norm", every call gets the same `max_len`: the weight is then B_mb / B for any max_len).
    """
    return share_weight(float(mask_mb.sum()), mask_mb.shape[0], float(mask_full.sum()), mask_full.shape[0], aggregation)


def share_weight(tokens_mb: float, rows_mb: int, tokens_full: float, rows_full: int, aggregation: Aggregation) -> float:
    """`microbatch_weight` from counts: what a data-parallel rank uses, with the full batch's token and row
    counts summed over the ranks that hold its rows."""
    if aggregation == "token-mean":
        return max(tokens_mb, 1.0) / max(tokens_full, 1.0)
    if aggregation in ("seq-mean-token-mean", "seq-mean-token-sum-norm"):
        return rows_mb / rows_full
    raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {AGGREGATIONS}")


# KL(pi || pi_other) estimators on tokens sampled from pi, d = logp - other_logp
# (Schulman, "Approximating KL divergence", 2020).


def kl_k1(d: torch.Tensor) -> torch.Tensor:
    """k1 = d: unbiased, high variance, can be negative; its gradient is 1."""
    return d


def kl_k2(d: torch.Tensor) -> torch.Tensor:
    """k2 = d^2 / 2: biased, low variance, >= 0; its gradient is d."""
    return 0.5 * d * d


def kl_k3(d: torch.Tensor) -> torch.Tensor:
    """k3 = exp(-d) - 1 + d: unbiased, >= 0, k3(0) = 0; its gradient is 1 - exp(-d)."""
    return torch.expm1(-d) + d


KL_ESTIMATOR_FNS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_estimate(logp: torch.Tensor, other_logp: torch.Tensor, estimator: KLEstimator) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_other) on tokens sampled from pi: `kl_<estimator>(logp - other_logp)`."""
    if estimator not in KL_ESTIMATOR_FNS:
        raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {KL_ESTIMATORS}")
    return KL_ESTIMATOR_FNS[estimator](logp - other_logp)


def _masked_kl(
    logp: torch.Tensor, other_logp: torch.Tensor, mask: torch.Tensor, estimator: KLEstimator
) -> torch.Tensor:
    """`kl_estimate` with d = 0 on padded positions (a non-finite d there would give a nan gradient)."""
    return kl_estimate(torch.where(mask > 0, logp, 0.0), torch.where(mask > 0, other_logp, 0.0), estimator)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask > 0, x, 0.0).sum() / mask.sum().clamp(min=1.0)


# ---------------------------------------------------------------------------------------------------------
# The clipped surrogate shared by every ratio-based method
# ---------------------------------------------------------------------------------------------------------


def _clipped_surrogate(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float,
    eps_high: float,
    aggregation: Aggregation,
    max_len: int | None,
    penalty: torch.Tensor | None,
    extra_metrics: dict[str, torch.Tensor],
) -> tuple[torch.Tensor, Metrics]:
    """`-min(r*A, clip(r, 1-eps_low, 1+eps_high)*A) (+ penalty)`, aggregated; shared by GRPO, TRRD and OPD.

    `advantages` is (B,) (one per response) or (B, T) (per token, on-policy distillation).
    """
    # padded positions are set to a neutral value before any arithmetic, so a non-finite log-prob there can
    # reach neither the loss nor its gradient (where() sends a zero gradient to the branch it does not take)
    on = mask > 0
    ratio = torch.exp(torch.where(on, log_ratio, 0.0))  # (B, T)
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else torch.where(on, advantages, 0.0)  # (B, 1) | (B, T)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    if penalty is not None:
        per_token = per_token + penalty
    loss = aggregate(per_token, mask, aggregation, max_len=max_len)

    with torch.no_grad():
        # A token is "clipped" when the clipped branch is the one taken, i.e. its gradient is zero.
        clipped_low = (ratio < 1.0 - eps_low) & (adv < 0)
        clipped_high = (ratio > 1.0 + eps_high) & (adv > 0)
        has_tokens = on.any()
        inf = torch.tensor(float("inf"), dtype=ratio.dtype, device=ratio.device)
        zero = torch.zeros((), dtype=ratio.dtype, device=ratio.device)
        stats = {
            "loss": loss.detach(),
            "clip_frac_low": _masked_mean(clipped_low.to(ratio.dtype), mask),
            "clip_frac_high": _masked_mean(clipped_high.to(ratio.dtype), mask),
            "ratio_mean": _masked_mean(ratio, mask),
            "ratio_min": torch.where(has_tokens, torch.where(on, ratio, inf).min(), zero),
            "ratio_max": torch.where(has_tokens, torch.where(on, ratio, -inf).max(), zero),
            **extra_metrics,
        }
        # one device->host transfer for all metrics
        values = torch.stack([v.to(torch.float64).reshape(()) for v in stats.values()]).tolist()
    return loss, dict(zip(stats, values, strict=True))


def _reference_penalty(
    logp: torch.Tensor, ref_logp: torch.Tensor | None, beta: float, mask: torch.Tensor, estimator: KLEstimator
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """Optional `beta * KL_est(pi_S || pi_ref)` per token (GRPO's reference penalty; beta = 0 disables it)."""
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta == 0.0:
        return None, {}
    if ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp (log-probs of a frozen reference model)")
    kl_ref = _masked_kl(logp, ref_logp, mask, estimator)
    return beta * kl_ref, {"kl_ref": _masked_mean(kl_ref.detach(), mask)}


def _teacher_gap(teacher_logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `teacher_logp - old_logp` on completion tokens: > 0 where the teacher likes the samples more."""
    return _masked_mean(teacher_logp - old_logp, mask)


def _check_eps(eps_low: float, eps_high: float) -> None:
    if eps_low < 0 or eps_high < 0:
        raise ValueError(f"clip ranges must be >= 0, got eps_low={eps_low}, eps_high={eps_high}")


# ---------------------------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------------------------


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    aggregation: Aggregation = "seq-mean-token-mean",
    max_len: int | None = None,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    ref_estimator: KLEstimator = "k3",
) -> tuple[torch.Tensor, Metrics]:
    """GRPO (RLAD.md Eq. 1): `l_t = -min(r*A, clip(r, 1-eps_low, 1+eps_high)*A)`, `r = exp(logp - old_logp)`.

    Plus `beta * KL_est(pi_S || pi_ref)` per token when beta > 0 (`ref_estimator`, default k3). Aggregated by
    `aggregation`; `max_len` is the normaliser of "seq-mean-token-sum-norm" (see `aggregate`).
    """
    _check_eps(eps_low, eps_high)
    penalty, extra = _reference_penalty(logp, ref_logp, beta, mask, ref_estimator)
    return _clipped_surrogate(
        logp - old_logp,
        advantages,
        mask,
        eps_low=eps_low,
        eps_high=eps_high,
        aggregation=aggregation,
        max_len=max_len,
        penalty=penalty,
        extra_metrics=extra,
    )


def teacher_clamp_stop(x: torch.Tensor, c: float) -> torch.Tensor:
    """Plain clamp to [-c, c]: gradient 1 inside, 0 outside (the teacher term stops pulling; our default)."""
    return torch.clamp(x, -c, c)


def teacher_clamp_straight_through(x: torch.Tensor, c: float) -> torch.Tensor:
    """Straight-through clamp: the value of clamp(x, -c, c), but gradient 1 everywhere (as if unclamped)."""
    return x + (torch.clamp(x, -c, c) - x).detach()


TEACHER_CLAMP_FNS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "stop": teacher_clamp_stop,
    "straight-through": teacher_clamp_straight_through,
}


def trrd_log_ratio(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    *,
    alpha: float = 0.5,
    teacher_clamp: float | None = 1.0,
    teacher_clamp_grad: TeacherClampGrad = "stop",
) -> torch.Tensor:
    """TRRD log-ratio (RLAD.md Eq. 3 and 5): `alpha*(logp - old_logp) + (1-alpha)*clamp(logp - teacher_logp, -c, c)`.

    i.e. `r = pi_S / (pi_old^alpha * pi_T^(1-alpha))`. The paper does not say how the clamp's gradient behaves:
    `teacher_clamp_grad="stop"` (our default) is a plain clamp, so outside [-c, c] no gradient flows through the
    teacher term; "straight-through" keeps the clamped value but passes the gradient as if unclamped.
    `teacher_clamp=None` disables the clamp. At alpha = 1 the teacher term is dropped entirely, so the result
    is bit-identical to GRPO's log-ratio (and a non-finite teacher log-prob cannot leak in through `0 * inf`).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if teacher_clamp is not None and teacher_clamp <= 0:
        raise ValueError(f"teacher_clamp must be > 0 or None, got {teacher_clamp}")
    if teacher_clamp_grad not in TEACHER_CLAMP_FNS:
        raise ValueError(f"unknown teacher_clamp_grad {teacher_clamp_grad!r}; choose one of {TEACHER_CLAMP_GRADS}")
    student_term = logp - old_logp
    if alpha == 1.0:
        return student_term
    teacher_term = logp - teacher_logp
    if teacher_clamp is not None:
        teacher_term = TEACHER_CLAMP_FNS[teacher_clamp_grad](teacher_term, teacher_clamp)
    return alpha * student_term + (1.0 - alpha) * teacher_term


def trrd_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    alpha: float = 0.5,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    teacher_clamp: float | None = 1.0,
    teacher_clamp_grad: TeacherClampGrad = "stop",
    aggregation: Aggregation = "seq-mean-token-mean",
    max_len: int | None = None,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    ref_estimator: KLEstimator = "k3",
) -> tuple[torch.Tensor, Metrics]:
    """RLAD loss (RLAD.md Eq. 4): the GRPO loss with `r` replaced by the TRRD ratio (see `trrd_log_ratio`).

    Same clip, same advantage, same aggregation, same optional reference penalty. `alpha=1` is GRPO exactly.
    """
    _check_eps(eps_low, eps_high)
    log_ratio = trrd_log_ratio(
        logp, old_logp, teacher_logp, alpha=alpha, teacher_clamp=teacher_clamp, teacher_clamp_grad=teacher_clamp_grad
    )
    penalty, extra = _reference_penalty(logp, ref_logp, beta, mask, ref_estimator)
    extra["teacher_gap"] = _teacher_gap(teacher_logp, old_logp, mask)
    return _clipped_surrogate(
        log_ratio,
        advantages,
        mask,
        eps_low=eps_low,
        eps_high=eps_high,
        aggregation=aggregation,
        max_len=max_len,
        penalty=penalty,
        extra_metrics=extra,
    )


def kdrl_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    coef: float = 0.002,
    estimator: KLEstimator = "k2",
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    aggregation: Aggregation = "seq-mean-token-mean",
    max_len: int | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """KDRL: GRPO plus an advantage-independent reverse-KL penalty, `+ coef * KL_est(logp, teacher_logp)` per token.

    The estimator (k1, k2, k3; default k2) is computed on the student's own samples, d = logp - teacher_logp.
    """
    _check_eps(eps_low, eps_high)
    if coef < 0:
        raise ValueError(f"coef must be >= 0, got {coef}")
    kl_teacher = _masked_kl(logp, teacher_logp, mask, estimator)
    extra = {
        "kl_teacher": _masked_mean(kl_teacher.detach(), mask),
        "teacher_gap": _teacher_gap(teacher_logp, old_logp, mask),
    }
    return _clipped_surrogate(
        logp - old_logp,
        advantages,
        mask,
        eps_low=eps_low,
        eps_high=eps_high,
        aggregation=aggregation,
        max_len=max_len,
        penalty=coef * kl_teacher,
        extra_metrics=extra,
    )


def opd_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    aggregation: Aggregation = "seq-mean-token-mean",
    max_len: int | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """On-policy distillation without reward (ours): the clipped surrogate with per-token advantage
    `A_t = -(old_logp - teacher_logp)`, i.e. minus the sampled-token reverse KL to the teacher.
    """
    _check_eps(eps_low, eps_high)
    token_advantages = (teacher_logp - old_logp).detach()  # (B, T)
    extra = {"teacher_gap": _teacher_gap(teacher_logp, old_logp, mask)}
    return _clipped_surrogate(
        logp - old_logp,
        token_advantages,
        mask,
        eps_low=eps_low,
        eps_high=eps_high,
        aggregation=aggregation,
        max_len=max_len,
        penalty=None,
        extra_metrics=extra,
    )


def sft_loss(
    logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    aggregation: Aggregation = "token-mean",
    max_len: int | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Offline distillation / supervised fine-tuning: cross-entropy `-logp` on the target tokens."""
    loss = aggregate(-logp, mask, aggregation, max_len=max_len)
    with torch.no_grad():
        nll = float(_masked_mean(-logp, mask))
    return loss, {"loss": float(loss.detach()), "nll": nll}
