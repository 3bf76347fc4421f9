"""The training loss's differentiable per-token error against autograd of plain torch."""

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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
class TestCompiledKernel:
    @with_dtypes
    @pytest.mark.parametrize(
        "n,k,d", [(1, 5, 7), (37, 33, 65), (1000, 1536, 576), (65536, 5632, 2048)]
    )
    @pytest.mark.parametrize("with_bias", [False, True])
    def test_fused_equals_reference(self, dtype, n, k, d, with_bias):
        h, w, x, y, b = (t.cuda() for t in _inputs(n, k, d, dtype, seed=n))
        bias = b if with_bias else None
        ref = fused_projection_error_reference(h, w, x, y, [], bias, return_per_token=True)
        taus = _separated_taus(ref.per_token_sq)
        ref = fused_projection_error_reference(h, w, x, y, taus, bias, return_per_token=True)
        mine = kernels.fused_projection_error(h, w, x, y, taus, bias, return_per_token=True)
        _assert_same(mine, ref, rtol=1e-5, sum_rtol=1e-4)

    @with_dtypes
    def test_pair_equals_reference(self, dtype):
        _, _, x, y, _ = (t.cuda() for t in _inputs(65536, 1, 2048, dtype, seed=11))
        taus = _separated_taus(pair_error_reference(x, y, [], True).per_token_sq)
        mine = kernels.pair_error(x, y, taus, return_per_token=True)
        _assert_same(mine, pair_error_reference(x, y, taus, True), rtol=1e-5, sum_rtol=1e-4)

    def test_ties_and_nan(self):
        d, tau = 2048, 2.5
        y = torch.arange(4096 * d, device="cuda").view(4096, d).remainder(7).float()
        pred = y.clone()
        pred[:, 100] += tau
        pred[7, 0] = math.nan
        stats = kernels.pair_error(pred, y, [tau])
        assert stats.counts.tolist() == [4095] and math.isnan(stats.max_error)
        h = torch.zeros(4096, 64, device="cuda")
        h[:, 3] = tau
        w = torch.zeros(d, 64, device="cuda")
        w[100, 3] = 1.0
        stats = kernels.fused_projection_error(h, w, y, y, [tau])
        assert stats.counts.tolist() == [4096] and stats.max_error == tau
