"""Hand-worked examples and identities for rlad_core.losses (shared/RLAD.md)."""

from __future__ import annotations

import math

import pytest
import torch

from rlad_core import losses

# ---------------------------------------------------------------------------------------------------------
# A 2-response, 3-token example, worked by hand.
#   mask  = [[1, 1, 1], [1, 1, 0]]         (response 1 has two completion tokens)
#   A     = [+1, -1]
#   logp  = [[-1.0, -0.5, -2.0], [-0.3, -1.2, -0.7]]
#   old   = [[-1.3, -0.5, -1.8], [-0.3, -0.9, -1.0]]
#   logp - old = [[0.3, 0, -0.2], [0, -0.3, 0.3]]
#   r     = [[1.349859, 1, 0.818731], [1, 0.740818, (masked)]]
# GRPO, eps_low 0.2, eps_high 0.28 (window [0.8, 1.28]):
#   row 0 (A=+1): -min(r, clip r) = -[1.28 (clipped high), 1, 0.818731]      mean = -3.098731/3 = -1.032910
#   row 1 (A=-1): -min(-r, -clip r) = [1, 0.8 (clipped low)]                 mean = 1.8/2 = 0.9
#   seq-mean-token-mean = (-1.032910 + 0.9) / 2 = -0.066455
#   token-mean          = (-3.098731 + 1.8) / 5 = -0.259746
#   seq-mean-token-sum-norm = (-3.098731 + 1.8) / (2 * 3) = -0.216455
#   clip_frac_low = clip_frac_high = 1/5; ratio mean = 4.909408/5, min 0.740818, max 1.349859
# ---------------------------------------------------------------------------------------------------------

MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
ADV = torch.tensor([1.0, -1.0], dtype=torch.float64)
LOGP = torch.tensor([[-1.0, -0.5, -2.0], [-0.3, -1.2, -0.7]], dtype=torch.float64)
OLD = torch.tensor([[-1.3, -0.5, -1.8], [-0.3, -0.9, -1.0]], dtype=torch.float64)
TEACHER = torch.tensor([[-0.8, -1.0, -1.9], [-0.3, -1.5, -0.2]], dtype=torch.float64)

ROW0 = -(1.28 + 1.0 + math.exp(-0.2))
ROW1 = 1.0 + 0.8


def test_grpo_hand_worked_value_and_metrics():
    loss, m = losses.grpo_loss(LOGP, OLD, ADV, MASK)
    assert loss.item() == pytest.approx((ROW0 / 3 + ROW1 / 2) / 2, abs=1e-12)
    assert loss.item() == pytest.approx(-0.066455, abs=1e-6)
    assert m["clip_frac_low"] == pytest.approx(0.2)
    assert m["clip_frac_high"] == pytest.approx(0.2)
    assert m["ratio_mean"] == pytest.approx((math.exp(0.3) + 1 + math.exp(-0.2) + 1 + math.exp(-0.3)) / 5)
    assert m["ratio_min"] == pytest.approx(math.exp(-0.3))
    assert m["ratio_max"] == pytest.approx(math.exp(0.3))
    assert "kl_ref" not in m and "teacher_gap" not in m


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [("token-mean", (ROW0 + ROW1) / 5), ("seq-mean-token-sum-norm", (ROW0 + ROW1) / 6)],
)
def test_grpo_aggregations_hand_worked(aggregation, expected):
    loss, _ = losses.grpo_loss(LOGP, OLD, ADV, MASK, aggregation=aggregation)
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_trrd_hand_worked():
    # logp - teacher = [[-0.2, 0.5, -0.1], [0, 0.3, -0.5]]  (all inside the clamp c = 1)
    # log r = 0.5*(logp-old) + 0.5*(logp-teacher) = [[0.05, 0.25, -0.15], [0, 0, (masked)]]
    # row 0 (A=+1): r = [1.051271, 1.284025 -> clipped to 1.28, 0.860708]; loss -[sum]/3
    # row 1 (A=-1): r = [1, 1]; loss [1, 1] mean 1
    # teacher_gap = mean(teacher - old) = (0.5 - 0.5 - 0.1 + 0 - 0.6) / 5 = -0.14
    loss, m = losses.trrd_loss(LOGP, OLD, TEACHER, ADV, MASK, alpha=0.5)
    row0 = -(math.exp(0.05) + 1.28 + math.exp(-0.15)) / 3
    assert loss.item() == pytest.approx((row0 + 1.0) / 2, abs=1e-12)
    assert m["teacher_gap"] == pytest.approx(-0.14, abs=1e-12)
    assert m["clip_frac_high"] == pytest.approx(0.2)
    assert m["clip_frac_low"] == 0.0


def test_trrd_teacher_clamp_bounds_the_teacher_term():
    far_teacher = TEACHER.clone()
    far_teacher[0, 0] = -5.0  # logp - teacher = 4 -> clamped to 1
    lr = losses.trrd_log_ratio(LOGP, OLD, far_teacher, alpha=0.5, teacher_clamp=1.0)
    assert lr[0, 0].item() == pytest.approx(0.5 * 0.3 + 0.5 * 1.0)
    unclamped = losses.trrd_log_ratio(LOGP, OLD, far_teacher, alpha=0.5, teacher_clamp=None)
    assert unclamped[0, 0].item() == pytest.approx(0.5 * 0.3 + 0.5 * 4.0)
    # plain clamp: no gradient through the teacher term outside [-c, c]
    logp = LOGP.clone().requires_grad_(True)
    losses.trrd_log_ratio(logp, OLD, far_teacher, alpha=0.5, teacher_clamp=1.0)[0, 0].backward()
    assert logp.grad[0, 0].item() == pytest.approx(0.5)


def test_trrd_alpha_one_equals_grpo_exactly_in_value_and_gradient():
    torch.manual_seed(0)
    logp0 = torch.randn(4, 5) - 1
    old = logp0 + 0.3 * torch.randn(4, 5)
    teacher = logp0 + torch.randn(4, 5)
    adv = torch.randn(4)
    mask = (torch.rand(4, 5) > 0.2).float()
    ref = logp0 + 0.1 * torch.randn(4, 5)
    for agg in losses.AGGREGATIONS:
        a = logp0.clone().requires_grad_(True)
        b = logp0.clone().requires_grad_(True)
        la, ma = losses.grpo_loss(a, old, adv, mask, aggregation=agg, ref_logp=ref, beta=0.1)
        lb, mb = losses.trrd_loss(b, old, teacher, adv, mask, alpha=1.0, aggregation=agg, ref_logp=ref, beta=0.1)
        la.backward()
        lb.backward()
        assert torch.equal(la, lb), agg
        assert torch.equal(a.grad, b.grad), agg
        assert {k: ma[k] for k in ma} == {k: mb[k] for k in ma}


def test_trrd_alpha_one_ignores_non_finite_teacher():
    teacher = torch.full_like(TEACHER, float("-inf"))
    loss, _ = losses.trrd_loss(LOGP, OLD, teacher, ADV, MASK, alpha=1.0, teacher_clamp=None)
    assert loss.item() == losses.grpo_loss(LOGP, OLD, ADV, MASK)[0].item()


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("clamp", [1.0, 0.25, None])
def test_trrd_ratio_at_first_inner_step(alpha, clamp):
    # at logp = old_logp the ratio is (pi_old / pi_T)^(1 - alpha), clamped: exp((1-alpha) clamp(old - teacher))
    torch.manual_seed(1)
    old = torch.randn(3, 4) - 1
    teacher = old + torch.randn(3, 4)
    lr = losses.trrd_log_ratio(old.clone(), old, teacher, alpha=alpha, teacher_clamp=clamp)
    d = old - teacher
    if clamp is not None:
        d = d.clamp(-clamp, clamp)
    torch.testing.assert_close(lr.exp(), torch.exp((1 - alpha) * d), rtol=0, atol=1e-6)


def test_gradients_match_finite_differences():
    torch.manual_seed(2)
    old = torch.randn(3, 4, dtype=torch.float64) - 1
    # stay away from the clip and clamp boundaries where the loss has kinks
    logp = (old + 0.05 * torch.randn(3, 4, dtype=torch.float64)).requires_grad_(True)
    teacher = old + 0.3 * torch.randn(3, 4, dtype=torch.float64)
    ref = old + 0.2 * torch.randn(3, 4, dtype=torch.float64)
    adv = torch.tensor([0.7, -1.2, 0.4], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.float64)
    fns = {
        "grpo": lambda x: losses.grpo_loss(x, old, adv, mask, ref_logp=ref, beta=0.05)[0],
        "trrd": lambda x: losses.trrd_loss(x, old, teacher, adv, mask, alpha=0.5, ref_logp=ref, beta=0.05)[0],
        "kdrl": lambda x: losses.kdrl_loss(x, old, teacher, adv, mask, coef=0.1, estimator="k3")[0],
        "opd": lambda x: losses.opd_loss(x, old, teacher, mask)[0],
        "sft": lambda x: losses.sft_loss(x, mask)[0],
    }
    for name, fn in fns.items():
        assert torch.autograd.gradcheck(fn, (logp,), eps=1e-6, atol=1e-7), name


def test_kdrl_hand_worked_k2_penalty():
    # GRPO part as above; penalty k2 = d^2/2 with d = logp - teacher = [[-0.2, 0.5, -0.1], [0, 0.3, (masked)]]
    # per-row mean of k2: row0 (0.02 + 0.125 + 0.005)/3 = 0.05, row1 (0 + 0.045)/2 = 0.0225 -> mean 0.03625
    coef = 0.5
    loss, m = losses.kdrl_loss(LOGP, OLD, TEACHER, ADV, MASK, coef=coef, estimator="k2")
    grpo, _ = losses.grpo_loss(LOGP, OLD, ADV, MASK)
    assert loss.item() == pytest.approx(grpo.item() + coef * 0.03625, abs=1e-12)
    assert m["kl_teacher"] == pytest.approx((0.02 + 0.125 + 0.005 + 0 + 0.045) / 5, abs=1e-12)


def test_kl_estimators():
    d = torch.tensor([-1.0, -0.1, 0.0, 0.1, 2.0])
    zero = torch.zeros(5)
    assert torch.equal(losses.kl_estimate(d, zero, "k1"), d)
    torch.testing.assert_close(losses.kl_estimate(d, zero, "k2"), d * d / 2)
    k3 = losses.kl_estimate(d, zero, "k3")
    torch.testing.assert_close(k3, torch.exp(-d) - 1 + d)
    assert (k3 >= 0).all() and k3[2].item() == 0.0
    with pytest.raises(ValueError, match="k4"):
        losses.kl_estimate(d, zero, "k4")


def test_opd_hand_worked():
    # per-token advantage teacher - old = [[0.5, -0.5, -0.1], [0, -0.6]], ratio r as in the GRPO example
    # row 0: A=+0.5, r=1.349859 -> -min(0.674929, 0.64) = -0.64;  A=-0.5, r=1 -> 0.5;  A=-0.1, r=0.818731 -> 0.0818731
    # row 1: A=0 -> 0;  A=-0.6, r=0.740818 -> -min(-0.444491, -0.48) = 0.48
    loss, m = losses.opd_loss(LOGP, OLD, TEACHER, MASK)
    row0 = (-0.64 + 0.5 + 0.1 * math.exp(-0.2)) / 3
    row1 = (0.0 + 0.48) / 2
    assert loss.item() == pytest.approx((row0 + row1) / 2, abs=1e-12)
    assert m["teacher_gap"] == pytest.approx(-0.14)


def test_sft_loss_is_token_mean_nll():
    loss, m = losses.sft_loss(LOGP, MASK)
    assert loss.item() == pytest.approx((1.0 + 0.5 + 2.0 + 0.3 + 1.2) / 5)
    assert m["nll"] == pytest.approx(loss.item())


def test_reference_penalty_and_kl_ref_metric():
    ref = OLD.clone()
    loss, m = losses.grpo_loss(LOGP, OLD, ADV, MASK, ref_logp=ref, beta=0.5)
    base, _ = losses.grpo_loss(LOGP, OLD, ADV, MASK)
    k3 = losses.kl_estimate(LOGP, ref, "k3")
    expected_pen = ((k3 * MASK).sum(1) / MASK.sum(1)).mean()
    assert loss.item() == pytest.approx(base.item() + 0.5 * expected_pen.item(), abs=1e-12)
    assert m["kl_ref"] == pytest.approx(float((k3 * MASK).sum() / MASK.sum()))
    with pytest.raises(ValueError, match="ref_logp"):
        losses.grpo_loss(LOGP, OLD, ADV, MASK, beta=0.5)


def test_group_advantages_hand_worked():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv = losses.group_advantages(rewards, 4)
    # group 1: mean 0.5, population std 0.5 -> +-0.5 / (0.5 + 1e-6); group 2 all equal -> exactly 0
    torch.testing.assert_close(adv[:4], torch.tensor([1.0, -1.0, -1.0, 1.0]) * 0.5 / (0.5 + 1e-6))
    assert torch.equal(adv[4:], torch.zeros(4))
    unbiased = losses.group_advantages(rewards, 4, std="unbiased", eps=0.0)
    torch.testing.assert_close(unbiased[:4], torch.tensor([1.0, -1.0, -1.0, 1.0]) * 0.5 / math.sqrt(1 / 3))
    centred = losses.group_advantages(rewards, 4, scale="none")
    torch.testing.assert_close(centred, torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))


def test_equal_rewards_give_exactly_zero_advantage():
    # 0.1 summed eight times is not 0.8 in floating point; the advantage must still be exactly 0
    for value in (0.1, 1 / 3, -0.7, 1e6 + 0.1):
        rewards = torch.full((16,), value)
        assert torch.equal(losses.group_advantages(rewards, 8), torch.zeros(16))
        assert torch.equal(losses.group_advantages(rewards, 8, scale="none"), torch.zeros(16))


def test_group_advantages_rejects_bad_group():
    with pytest.raises(ValueError, match="groups of 3"):
        losses.group_advantages(torch.zeros(8), 3)


def test_microbatch_weights_reassemble_the_full_loss():
    torch.manual_seed(3)
    logp = torch.randn(6, 5) - 1
    old = logp + 0.2 * torch.randn(6, 5)
    adv = torch.randn(6)
    mask = (torch.rand(6, 5) > 0.3).float()
    for agg in losses.AGGREGATIONS:
        full, _ = losses.grpo_loss(logp, old, adv, mask, aggregation=agg)
        parts = 0.0
        for rows in torch.arange(6).split(2):
            part, _ = losses.grpo_loss(logp[rows], old[rows], adv[rows], mask[rows], aggregation=agg)
            parts += part * losses.microbatch_weight(mask[rows], mask, agg)
        torch.testing.assert_close(parts, full, rtol=1e-6, atol=1e-7)


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="alpha"):
        losses.trrd_loss(LOGP, OLD, TEACHER, ADV, MASK, alpha=1.5)
    with pytest.raises(ValueError, match="clip"):
        losses.grpo_loss(LOGP, OLD, ADV, MASK, eps_low=-0.1)
    with pytest.raises(ValueError, match="aggregation"):
        losses.grpo_loss(LOGP, OLD, ADV, MASK, aggregation="sum")
