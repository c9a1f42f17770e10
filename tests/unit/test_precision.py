"""fp32 master weights for half-precision students (rlad_core.precision)."""

from __future__ import annotations

import torch

from rlad_core.precision import MasterWeights


def _steps(param: torch.nn.Parameter, optimizer: torch.optim.Optimizer, n: int, masters=None) -> None:
    for _ in range(n):
        param.grad = torch.ones_like(param)
        if masters is not None:
            masters.take_grads()
        optimizer.step()
        if masters is not None:
            masters.publish()


def test_updates_below_bf16_resolution_accumulate_in_the_masters():
    """lr 1e-4 moves a weight of 1.0 by 1e-4 a step, under bf16's resolution there (2^-7): a bf16 AdamW never
    moves it; with fp32 masters 100 steps move it by 0.01, and the bf16 weight follows."""
    plain = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    _steps(plain, torch.optim.AdamW([plain], lr=1e-4, weight_decay=0.0), 100)
    assert torch.equal(plain.detach(), torch.ones(4, dtype=torch.bfloat16))

    half = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    masters = MasterWeights([half])
    optimizer = torch.optim.AdamW(masters.masters, lr=1e-4, weight_decay=0.0)
    _steps(half, optimizer, 100, masters)
    assert (
        masters.masters[0].dtype == torch.float32
        and optimizer.state[masters.masters[0]]["exp_avg"].dtype == torch.float32
    )
    torch.testing.assert_close(masters.masters[0].detach(), torch.full((4,), 0.99), rtol=0, atol=1e-5)
    assert half.dtype == torch.bfloat16 and torch.equal(half.detach(), masters.masters[0].detach().bfloat16())


def test_loading_masters_rounds_the_model_from_them():
    half = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    masters = MasterWeights([half])
    masters.load([torch.tensor([1.0001, 2.5, -3.0])])
    assert masters.state()[0].tolist() == torch.tensor([1.0001, 2.5, -3.0]).tolist()
    assert half.detach().tolist() == [1.0, 2.5, -3.0]
