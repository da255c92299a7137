"""The models' CPU dropout: the distribution of nn.Dropout, gradients through the same mask."""

from __future__ import annotations

import pytest
import torch

from strata.models.gnn import Dropout


@pytest.mark.parametrize("p", [0.1, 0.6])
def test_dropout_keeps_1_minus_p_and_preserves_the_mean(p: float) -> None:
    torch.manual_seed(0)
    drop = Dropout(p).train()
    x = torch.ones(400, 500, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005  # 200k draws: 3 sigma is under 0.004
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(sum)/dx is the scaled mask itself


def test_dropout_is_the_identity_in_eval_and_at_zero() -> None:
    x = torch.randn(7, 3)
    assert Dropout(0.5).eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    assert torch.count_nonzero(Dropout(1.0).train()(x)) == 0
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.5)
