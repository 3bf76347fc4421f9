"""The training loss's differentiable per-token error against autograd of plain torch."""

import pytest
import torch

from blockcert.lit.loss import per_token_error


def test_per_token_error_gradcheck():
    g = torch.Generator().manual_seed(8)
    pred = torch.randn(2, 3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    target = torch.randn(2, 3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(per_token_error, (pred, target))
    err = per_token_error(pred, target)
    assert err.shape == (6,)
    torch.testing.assert_close(err, (pred - target).norm(dim=-1).reshape(-1))


def test_per_token_error_matches_autograd_of_the_reference():
    g = torch.Generator().manual_seed(10)
    pred = torch.randn(7, 9, generator=g, requires_grad=True)
    target = torch.randn(7, 9, generator=g)
    weights = torch.rand(7, generator=g)
    (per_token_error(pred, target) * weights).sum().backward()
    mine = pred.grad.clone()
    pred.grad = None
    ((pred - target).pow(2).sum(-1).sqrt() * weights).sum().backward()
    torch.testing.assert_close(mine, pred.grad)


def test_per_token_error_is_fp32_for_half_inputs():
    pred = torch.randn(4, 6, dtype=torch.bfloat16, requires_grad=True)
    err = per_token_error(pred, torch.zeros(4, 6, dtype=torch.bfloat16))
    assert err.dtype == torch.float32
    torch.testing.assert_close(err, pred.detach().float().norm(dim=-1))
    err.sum().backward()
    assert pred.grad.dtype == torch.bfloat16


def test_per_token_error_gradient_is_zero_at_zero_error():
    pred = torch.ones(3, 4, requires_grad=True)
    per_token_error(pred, torch.ones(3, 4)).sum().backward()
    assert torch.equal(pred.grad, torch.zeros(3, 4))


def test_per_token_error_shape_mismatch():
    with pytest.raises(ValueError, match="differ"):
        per_token_error(torch.zeros(3, 4), torch.zeros(3, 5))


# --- compiled kernel on CUDA ----------------------------------------------------------------
