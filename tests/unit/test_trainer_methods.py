"""rlad_core.trainer's dispatch from the method name to its loss (the loop itself: tests/integration)."""

from __future__ import annotations

from typing import get_args

import pytest
import torch

from rlad_core import trainer
from rlad_core.config import METHODS, Method, parse_config


def _config(**overrides):
    fields = {"student": "s", "teacher": "t", "batch_size": 4, "group_size": 2, "max_new_tokens": 8}
    return parse_config({**fields, **overrides})


def test_every_method_has_exactly_one_loss():
    assert METHODS == get_args(Method)
    assert set(trainer.METHOD_LOSSES) == set(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_method_loss_runs_the_configured_method(method):
    # 2 responses, 3 tokens, the last one padded; logp = old_logp, so every ratio-based loss sees r = 1 (or the
    # TRRD ratio); seq-mean-token-sum-norm divides by B * max_new_tokens = 2 * 8 whatever the padding
    logp = torch.tensor([[-1.0, -0.5, -2.0], [-0.3, -1.2, -0.7]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    cfg = _config(method=method, aggregation="seq-mean-token-sum-norm")
    loss, m = trainer._method_loss(cfg, 1, logp, mask, torch.tensor([1.0, -1.0]), logp, logp - 0.1, None)
    assert torch.isfinite(loss) and "loss" in m
    if method == "sft":  # sft is token-mean cross-entropy whatever the aggregation
        assert loss.item() == pytest.approx((1.0 + 0.5 + 2.0 + 0.3 + 1.2) / 5)
    if method == "grpo":  # -(1 + 1 + 1) + (1 + 1) over 2 * 8
        assert loss.item() == pytest.approx(-1.0 / 16)


def test_unknown_method_is_an_error_not_sft():
    cfg = _config().model_copy(update={"method": "ppo"})  # bypasses validation, as a stale object could
    logp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="unknown method 'ppo'"):
        trainer._method_loss(cfg, 1, logp, torch.ones(2, 3), torch.zeros(2), logp, logp, None)
