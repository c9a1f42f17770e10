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


# ---------------------------------------------------------------------------------------------------------
# Padding never leaks into the loss; Dr.GRPO's constant normaliser
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_values_at_padded_positions_do_not_change_the_loss(bad):
    # per-token loss [[1, 2, 3], [4, 5, bad]] with position (1, 2) padded:
    #   seq-mean-token-mean (6/3 + 9/2) / 2 = 3.25;  token-mean 15/5 = 3;  seq-mean-token-sum-norm 15/6 = 2.5
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, bad]], dtype=torch.float64)
    expected = {"seq-mean-token-mean": 3.25, "token-mean": 3.0, "seq-mean-token-sum-norm": 2.5}
    for agg, value in expected.items():
        assert losses.aggregate(per_token, MASK, agg).item() == pytest.approx(value, abs=1e-12), agg
    # through the losses: a non-finite old/teacher/reference log-prob on a padded token changes nothing
    old, teacher, ref = OLD.clone(), TEACHER.clone(), OLD.clone()
    old[1, 2] = teacher[1, 2] = ref[1, 2] = bad
    for agg in losses.AGGREGATIONS:
        clean, m_clean = losses.grpo_loss(LOGP, OLD, ADV, MASK, aggregation=agg, ref_logp=OLD, beta=0.1)
        dirty, m_dirty = losses.grpo_loss(LOGP, old, ADV, MASK, aggregation=agg, ref_logp=ref, beta=0.1)
        assert dirty.item() == pytest.approx(clean.item(), abs=1e-12), agg
        assert m_dirty == pytest.approx(m_clean, abs=1e-12), agg
        clean, _ = losses.trrd_loss(LOGP, OLD, TEACHER, ADV, MASK, aggregation=agg, teacher_clamp=None)
        dirty, m = losses.trrd_loss(LOGP, OLD, teacher, ADV, MASK, aggregation=agg, teacher_clamp=None)
        assert dirty.item() == pytest.approx(clean.item(), abs=1e-12), agg
        assert all(math.isfinite(v) for v in m.values()), m
    # ... nor its gradient: every method's gradient is the clean one, zero on the padded token
    fns = {
        "grpo": lambda x, o, t, r: losses.grpo_loss(x, o, ADV, MASK, ref_logp=r, beta=0.1)[0],
        "trrd": lambda x, o, t, r: losses.trrd_loss(x, o, t, ADV, MASK, teacher_clamp=None, ref_logp=r, beta=0.1)[0],
        "kdrl": lambda x, o, t, r: losses.kdrl_loss(x, o, t, ADV, MASK, coef=0.1, estimator="k2")[0],
        "opd": lambda x, o, t, r: losses.opd_loss(x, o, t, MASK)[0],
    }
    for name, fn in fns.items():
        grads = []
        for o, t, r in ((OLD, TEACHER, OLD), (old, teacher, ref)):
            x = LOGP.clone().requires_grad_(True)
            fn(x, o, t, r).backward()
            grads.append(x.grad)
        torch.testing.assert_close(grads[1], grads[0], msg=name)
        assert grads[1][1, 2].item() == 0.0, name


def test_seq_mean_token_sum_norm_divides_by_max_len_not_the_padded_length():
    # the batch is padded to its longest completion, 3 tokens; the configured budget is max_new_tokens = 8:
    #   (ROW0 + ROW1) / (B * max_new_tokens) = (-3.098731 + 1.8) / (2 * 8) = -0.081171
    loss, _ = losses.grpo_loss(LOGP, OLD, ADV, MASK, aggregation="seq-mean-token-sum-norm", max_len=8)
    assert loss.item() == pytest.approx((ROW0 + ROW1) / 16, abs=1e-12)
    assert loss.item() == pytest.approx(-0.081171, abs=1e-6)
    # the same tokens padded to 5 instead of 3 give the same loss: the normaliser no longer depends on padding
    pad = (0, 2)
    wide, _ = losses.grpo_loss(
        torch.nn.functional.pad(LOGP, pad),
        torch.nn.functional.pad(OLD, pad),
        ADV,
        torch.nn.functional.pad(MASK, pad),
        aggregation="seq-mean-token-sum-norm",
        max_len=8,
    )
    assert wide.item() == pytest.approx(loss.item(), abs=1e-12)
    # the other aggregations ignore max_len; a budget shorter than the batch is an error
    for agg in ("seq-mean-token-mean", "token-mean"):
        with_len, _ = losses.grpo_loss(LOGP, OLD, ADV, MASK, aggregation=agg, max_len=8)
        assert with_len.item() == losses.grpo_loss(LOGP, OLD, ADV, MASK, aggregation=agg)[0].item()
    with pytest.raises(ValueError, match="max_len 2"):
        losses.aggregate(LOGP, MASK, "seq-mean-token-sum-norm", max_len=2)
    sft, _ = losses.sft_loss(LOGP, MASK, aggregation="seq-mean-token-sum-norm", max_len=8)
    assert sft.item() == pytest.approx((1.0 + 0.5 + 2.0 + 0.3 + 1.2) / 16)


def test_microbatch_weights_reassemble_the_full_loss_with_max_len():
    torch.manual_seed(4)
    logp = torch.randn(6, 5) - 1
    old = logp + 0.2 * torch.randn(6, 5)
    adv = torch.randn(6)
    mask = (torch.rand(6, 5) > 0.3).float()
    agg = "seq-mean-token-sum-norm"
    full, _ = losses.grpo_loss(logp, old, adv, mask, aggregation=agg, max_len=12)
    parts = 0.0
    for rows in torch.arange(6).split(2):
        part, _ = losses.grpo_loss(logp[rows], old[rows], adv[rows], mask[rows], aggregation=agg, max_len=12)
        parts += part * losses.microbatch_weight(mask[rows], mask, agg)
    torch.testing.assert_close(parts, full, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------
# The open choices: reference-KL estimator, gradient of the teacher clamp
# ---------------------------------------------------------------------------------------------------------


def test_kl_estimator_functions_identities_and_gradients():
    d = torch.tensor([-1.0, -0.1, 0.0, 0.1, 2.0], dtype=torch.float64, requires_grad=True)
    assert tuple(losses.KL_ESTIMATOR_FNS) == losses.KL_ESTIMATORS == ("k1", "k2", "k3")
    for name, fn in losses.KL_ESTIMATOR_FNS.items():
        assert fn(torch.zeros(1, dtype=torch.float64)).item() == 0.0, name  # KL of a distribution with itself
        assert torch.autograd.gradcheck(fn, (d,)), name
    torch.testing.assert_close(losses.kl_k1(d), d)
    torch.testing.assert_close(losses.kl_k2(d), d * d / 2)
    torch.testing.assert_close(losses.kl_k3(d), torch.exp(-d) - 1 + d)
    assert (losses.kl_k2(d) >= 0).all() and (losses.kl_k3(d) >= 0).all()
    # gradients: k1' = 1, k2' = d, k3' = 1 - exp(-d)
    for fn, grad in ((losses.kl_k1, torch.ones_like(d)), (losses.kl_k2, d), (losses.kl_k3, 1 - torch.exp(-d))):
        (g,) = torch.autograd.grad(fn(d).sum(), d)
        torch.testing.assert_close(g, grad.detach())
    # k1 and k3 are unbiased: on samples from p, E[k] = KL(p || q); here p = N(0, 1), q = N(0.5, 1): KL = 0.125
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400_000, generator=gen, dtype=torch.float64)
    d_samples = -0.5 * x**2 + 0.5 * (x - 0.5) ** 2  # log p(x) - log q(x)
    for fn in (losses.kl_k1, losses.kl_k3):
        assert fn(d_samples).mean().item() == pytest.approx(0.125, abs=3e-3)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_reference_penalty_uses_the_chosen_estimator(estimator):
    # penalty per row: mean of kl_<estimator>(logp - ref) over the row's tokens, then mean over rows
    ref = TEACHER
    loss, m = losses.grpo_loss(LOGP, OLD, ADV, MASK, ref_logp=ref, beta=0.5, ref_estimator=estimator)
    base, _ = losses.grpo_loss(LOGP, OLD, ADV, MASK)
    kl = losses.KL_ESTIMATOR_FNS[estimator](LOGP - ref)
    assert loss.item() == pytest.approx(base.item() + 0.5 * ((kl * MASK).sum(1) / MASK.sum(1)).mean().item())
    assert m["kl_ref"] == pytest.approx(float((kl * MASK).sum() / MASK.sum()))
    trrd, _ = losses.trrd_loss(
        LOGP, OLD, TEACHER, ADV, MASK, alpha=1.0, ref_logp=ref, beta=0.5, ref_estimator=estimator
    )
    assert trrd.item() == loss.item()


@pytest.mark.parametrize("x0", [-2.5, -0.4, 0.3, 1.7])
def test_teacher_clamp_gradient_inside_and_outside_the_window(x0):
    # c = 1. Both variants give the value clamp(x, -1, 1). Gradient d/dx:
    #   inside [-1, 1]: 1 for both (equals the finite difference of the clamp);
    #   outside: "stop" 0 (the finite difference of the flat clamp), "straight-through" 1 (as if unclamped)
    c, h = 1.0, 1e-6
    x = torch.tensor([x0], dtype=torch.float64, requires_grad=True)
    inside = abs(x0) < c
    finite_diff = (min(max(x0 + h, -c), c) - min(max(x0 - h, -c), c)) / (2 * h)
    assert set(losses.TEACHER_CLAMP_FNS) == set(losses.TEACHER_CLAMP_GRADS) == {"stop", "straight-through"}
    for name, fn in losses.TEACHER_CLAMP_FNS.items():
        y = fn(x, c)
        assert y.item() == pytest.approx(min(max(x0, -c), c)), name
        (g,) = torch.autograd.grad(y.sum(), x)
        expected = finite_diff if name == "stop" or inside else 1.0
        assert g.item() == pytest.approx(expected, abs=1e-6), name
    # through the TRRD log-ratio: d/dlogp = alpha + (1 - alpha) * clamp'
    logp = torch.tensor([[-1.0]], dtype=torch.float64, requires_grad=True)
    teacher = logp.detach() - x0
    for name, teacher_grad in (("stop", 1.0 if inside else 0.0), ("straight-through", 1.0)):
        lr = losses.trrd_log_ratio(logp, logp.detach(), teacher, alpha=0.5, teacher_clamp=c, teacher_clamp_grad=name)
        (g,) = torch.autograd.grad(lr.sum(), logp)
        assert g.item() == pytest.approx(0.5 + 0.5 * teacher_grad), name
    with pytest.raises(ValueError, match="teacher_clamp_grad"):
        losses.trrd_log_ratio(logp, logp, teacher, teacher_clamp_grad="soft")
