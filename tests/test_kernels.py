"""The fused certificate kernel equals its torch reference (CPU interpreter; GPU if present)."""

import math
import os
import subprocess
import sys

import pytest
import torch

import kernels
from kernels import (
    fused_projection_error_reference,
    pair_error_reference,
    per_token_error,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TAUS = [0.5, 2.0, 8.0, 9.5, 11.0]


INTERPRETED = kernels.cert_reduce.INTERPRET
# Triton picks interpreter or compiler when kernels are defined, so the interpreter cases run
# in a child pytest started with TRITON_INTERPRET=1 (test_interpreter_suite below).
needs_interpreter = pytest.mark.skipif(
    not INTERPRETED, reason="runs in the TRITON_INTERPRET=1 child of test_interpreter_suite"
)


@pytest.fixture
def interpreted():
    assert kernels.use_triton(torch.zeros(1))
    return kernels


@pytest.mark.skipif(INTERPRETED, reason="this is the child run")
def test_interpreter_suite():
    """Run every interpreter case of this file with Triton's CPU interpreter."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


def _inputs(n, k, d, dtype, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(*shape, generator=g) * scale).to(dtype)
        for shape in [(n, k), (d, k), (n, d), (n, d), (d,)]
    ]


def _assert_same(mine, ref, sum_rtol=1e-5):
    assert mine.n == ref.n
    if math.isnan(ref.max_error):
        assert math.isnan(mine.max_error)
    else:
        assert mine.max_error == pytest.approx(ref.max_error, rel=1e-6, abs=1e-6)
    assert torch.equal(mine.counts, ref.counts)
    assert mine.sum_error == pytest.approx(ref.sum_error, rel=sum_rtol, nan_ok=True)
    assert mine.sum_sq_error == pytest.approx(ref.sum_sq_error, rel=sum_rtol, nan_ok=True)


@needs_interpreter
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,d", [(1, 5, 7), (37, 33, 65), (70, 16, 130)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_kernel_equals_reference(interpreted, dtype, n, k, d, with_bias):
    h, w, x, y, b = _inputs(n, k, d, dtype)
    bias = b if with_bias else None
    mine = interpreted.fused_projection_error(h, w, x, y, TAUS, bias=bias, return_per_token=True)
    ref = fused_projection_error_reference(h, w, x, y, TAUS, bias=bias, return_per_token=True)
    _assert_same(mine, ref)
    torch.testing.assert_close(mine.per_token_sq, ref.per_token_sq, rtol=1e-5, atol=1e-4)


@needs_interpreter
@pytest.mark.parametrize("dtype", DTYPES)
def test_pair_kernel_equals_reference(interpreted, dtype):
    _, _, x, y, _ = _inputs(45, 1, 77, dtype, seed=3)
    mine = interpreted.pair_error(x, y, TAUS, return_per_token=True)
    ref = pair_error_reference(x, y, TAUS, return_per_token=True)
    _assert_same(mine, ref)
    assert mine.per_token_sq is not None


@needs_interpreter
def test_ties_at_tau_are_counted(interpreted):
    """A token whose error is exactly tau is covered (error <= tau)."""
    d, tau = 33, 2.5
    y = torch.zeros(5, d)
    pred = torch.zeros(5, d)
    pred[:, 3] = tau  # e_t == tau exactly in fp32
    pred[4, 3] = tau + 1e-5  # just above: not covered
    for fn in (interpreted.pair_error, pair_error_reference):
        stats = fn(pred, y, [tau])
        assert stats.counts.tolist() == [4]
        assert stats.max_error == pytest.approx(tau + 1e-5, rel=1e-7)


@needs_interpreter
def test_nan_propagates_to_max_and_is_never_counted(interpreted):
    h, w, x, y, _ = _inputs(20, 8, 24, torch.float32, seed=5)
    x[7, 2] = float("nan")
    mine = interpreted.fused_projection_error(h, w, x, y, [1e9])
    ref = fused_projection_error_reference(h, w, x, y, [1e9])
    assert math.isnan(mine.max_error) and math.isnan(ref.max_error)
    assert mine.counts.tolist() == ref.counts.tolist() == [19]


@needs_interpreter
def test_huge_values_overflow_like_the_reference(interpreted):
    h, w, x, y, _ = _inputs(9, 4, 12, torch.float32, seed=6)
    x[2] = 1e30  # squared error overflows fp32 to inf, in both
    mine = interpreted.pair_error(x, y, [1.0, float("inf")])
    ref = pair_error_reference(x, y, [1.0, float("inf")])
    assert mine.max_error == ref.max_error == float("inf")
    assert torch.equal(mine.counts, ref.counts)


@needs_interpreter
def test_merge_combines_batches(interpreted):
    h, w, x, y, _ = _inputs(30, 8, 16, torch.float32, seed=7)
    whole = fused_projection_error_reference(h, w, x, y, TAUS, return_per_token=True)
    a = interpreted.fused_projection_error(h[:11], w, x[:11], y[:11], TAUS, return_per_token=True)
    b = interpreted.fused_projection_error(h[11:], w, x[11:], y[11:], TAUS, return_per_token=True)
    _assert_same(a.merge(b), whole)
    assert a.merge(b).per_token_sq.shape == (30,)


def test_shape_errors_are_clear():
    h, w, x, y, _ = _inputs(4, 3, 5, torch.float32)
    with pytest.raises(ValueError, match="last dimension"):
        fused_projection_error_reference(h, w, x[:, :4], y, TAUS)


def test_per_token_error_gradient():
    g = torch.Generator().manual_seed(8)
    pred = torch.randn(6, 5, dtype=torch.float64, generator=g, requires_grad=True)
    target = torch.randn(6, 5, dtype=torch.float64, generator=g, requires_grad=True)
    torch.autograd.gradcheck(per_token_error, (pred, target))
    err = per_token_error(pred, target)
    torch.testing.assert_close(err, (pred - target).norm(dim=-1))


def test_per_token_error_gradient_is_zero_at_zero_error():
    pred = torch.ones(3, 4, requires_grad=True)
    per_token_error(pred, torch.ones(3, 4)).sum().backward()
    assert torch.equal(pred.grad, torch.zeros(3, 4))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,d", [(1, 5, 7), (1000, 333, 576), (65536, 5632, 2048)])
def test_compiled_kernel_equals_reference_on_gpu(dtype, n, k, d):
    h, w, x, y, b = (t.cuda() for t in _inputs(n, k, d, dtype, scale=0.05))
    mine = kernels.fused_projection_error(h, w, x, y, TAUS, bias=b, return_per_token=True)
    ref = fused_projection_error_reference(h, w, x, y, TAUS, bias=b, return_per_token=True)
    _assert_same(mine, ref, sum_rtol=1e-4)
