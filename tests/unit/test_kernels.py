"""The fused certificate kernel equals its torch reference (CPU interpreter; GPU if present).

Triton picks interpreter or compiler when it defines kernels (TRITON_INTERPRET is read when
`triton.language` is imported), so the cases marked `interpreted` run in a child pytest started
with TRITON_INTERPRET=1 by `test_interpreter_suite`; a plain `pytest tests/` runs them that way.
Counts are compared exactly, at thresholds placed between well separated reference errors (the
kernel sums in another order than torch, so a tau within an ulp of some e_t could flip).
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import blockcert.kernels.cert_reduce as kernels
from blockcert.kernels.cert_reduce import (
    fused_projection_error_reference,
    pair_error_reference,
)

REPO = Path(__file__).resolve().parents[2]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
with_dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).split(".")[-1])
INTERPRETED = kernels.INTERPRET
interpreted = pytest.mark.skipif(
    not INTERPRETED, reason="runs in the TRITON_INTERPRET=1 child of test_interpreter_suite"
)


@pytest.mark.skipif(INTERPRETED, reason="this is the child run")
def test_interpreter_suite():
    """Run this file's kernel cases through Triton's CPU interpreter, in a child pytest."""
    # the child needs no fixture of conftest.py (whose imports cost seconds), nor this test and
    # the import test below, which ran here
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest"),
            *("-k", "not interpreter_suite and not package_kernels_import", __file__),
        ],
        cwd=REPO,
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    # nothing is skipped in the child: every interpreter case really ran
    assert " passed" in summary and "skipped" not in summary, proc.stdout[-3000:]


def test_dispatcher_uses_triton_on_cpu_only_under_the_interpreter():
    assert kernels.use_triton(torch.zeros(1)) == INTERPRETED


def _inputs(n, k, d, dtype, seed=0, scale=1.0):
    """h [n, k], W [d, k], x [n, d], y [n, d], b [d]; W scaled so h W^T is O(scale)."""
    g = torch.Generator().manual_seed(seed)
    h, w, x, y, b = (
        torch.randn(*shape, generator=g) * scale for shape in [(n, k), (d, k), (n, d), (n, d), (d,)]
    )
    return [t.to(dtype) for t in (h, w / math.sqrt(k), x, y, b)]


def _separated_taus(per_token_sq: torch.Tensor, count: int = 6) -> list[float]:
    """Thresholds spread over the range of e_t, each in the widest gap of its part of the
    sorted errors, plus one below all and one above all."""
    err = per_token_sq.double().sqrt()
    err = err[torch.isfinite(err)].sort().values
    if err.numel() == 0:
        return [1.0]
    taus = [float(err[0]) * 0.5, float(err[-1]) * 1.5 + 1.0]
    gaps = err[1:] - err[:-1]
    for chunk in torch.arange(gaps.numel()).tensor_split(count):
        if chunk.numel():
            i = int(chunk[gaps[chunk].argmax()])
            taus.append(float(err[i] + err[i + 1]) / 2)
    return sorted(taus)


def _assert_same(mine, ref, rtol=1e-6, sum_rtol=1e-5):
    assert mine.n == ref.n
    if math.isnan(ref.max_error):
        assert math.isnan(mine.max_error)
    else:
        assert mine.max_error == pytest.approx(ref.max_error, rel=rtol, abs=1e-6)
    assert mine.counts.dtype == torch.int64
    assert torch.equal(mine.counts, ref.counts), (mine.counts, ref.counts)
    assert mine.sum_error == pytest.approx(ref.sum_error, rel=sum_rtol, nan_ok=True)
    assert mine.sum_sq_error == pytest.approx(ref.sum_sq_error, rel=sum_rtol, nan_ok=True)
    assert (mine.per_token_sq is None) == (ref.per_token_sq is None)
    if ref.per_token_sq is not None:
        assert mine.per_token_sq.dtype == torch.float32
        torch.testing.assert_close(
            mine.per_token_sq, ref.per_token_sq, rtol=10 * rtol, atol=1e-5, equal_nan=True
        )


# --- kernel == reference under the interpreter ----------------------------------------------


@interpreted
@with_dtypes
@pytest.mark.parametrize("n,k,d", [(1, 5, 7), (37, 33, 65), (70, 16, 130), (19, 1, 1)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_kernel_equals_reference(dtype, n, k, d, with_bias):
    h, w, x, y, b = _inputs(n, k, d, dtype)
    bias = b if with_bias else None
    ref = fused_projection_error_reference(h, w, x, y, [], bias=bias, return_per_token=True)
    taus = _separated_taus(ref.per_token_sq)
    ref = fused_projection_error_reference(h, w, x, y, taus, bias=bias, return_per_token=True)
    mine = kernels.fused_projection_error(h, w, x, y, taus, bias=bias, return_per_token=True)
    _assert_same(mine, ref)


@interpreted
@pytest.mark.parametrize("return_per_token", [False, True])
def test_fused_kernel_flattens_leading_dims_and_strides(return_per_token):
    h, w, x, y, b = _inputs(2 * 9, 24, 2 * 40, torch.float32, seed=1)
    # [batch, seq, .] inputs, and a non-contiguous residual and target (every other column)
    h, x, y = h.view(2, 9, 24), x.view(2, 9, 80)[..., ::2], y.view(2, 9, 80)[..., ::2]
    w, b = w[:40], b[:40]
    ref = fused_projection_error_reference(h, w, x, y, [1, 4, 6, 8], b, return_per_token)
    mine = kernels.fused_projection_error(h, w, x, y, [1, 4, 6, 8], b, return_per_token)
    _assert_same(mine, ref)


@interpreted
def test_fused_kernel_mixed_input_dtypes():
    h, w, x, y, b = _inputs(21, 17, 33, torch.float32, seed=2)
    args = (h.half(), w.bfloat16(), x, y.half(), [0.5, 1.0, 2.0], b.bfloat16())
    _assert_same(kernels.fused_projection_error(*args), fused_projection_error_reference(*args))


@interpreted
@with_dtypes
@pytest.mark.parametrize("return_per_token", [False, True])
def test_pair_kernel_equals_reference(dtype, return_per_token):
    _, _, x, y, _ = _inputs(45, 1, 77, dtype, seed=3)
    x, y = x.view(5, 9, 77), y.view(5, 9, 77)
    taus = _separated_taus(pair_error_reference(x, y, [], True).per_token_sq)
    mine = kernels.pair_error(x, y, taus, return_per_token=return_per_token)
    _assert_same(mine, pair_error_reference(x, y, taus, return_per_token=return_per_token))


# --- adversarial inputs ---------------------------------------------------------------------


@interpreted
@with_dtypes
def test_pair_ties_at_tau_are_counted(dtype):
    """A token whose error is exactly tau is covered (e_t <= tau); just above is not."""
    d, tau = 33, 2.5
    target = torch.arange(5 * d, dtype=torch.float32).view(5, d).remainder(7).to(dtype)
    pred = target.clone()
    pred[:, 3] += tau  # small integers + 2.5: exact in every dtype, so e_t == tau exactly
    pred[4, 3] += 0.125  # e_t = 2.625 > tau
    for fn in (kernels.pair_error, pair_error_reference):
        stats = fn(pred, target, torch.tensor([tau, 2.625]))
        assert stats.counts.tolist() == [4, 5]
        assert stats.max_error == 2.625
        assert stats.sum_sq_error == 4 * 6.25 + 2.625**2


@interpreted
@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_ties_at_tau_are_counted(with_bias):
    """pred - y = tau * one-hot exactly: h selects tau, W routes it to one output column."""
    n, k, d, tau = 6, 3, 20, 0.75
    h = torch.zeros(n, k)
    h[:, 1] = tau
    h[5, 1] = tau + 2**-10  # e_t just above tau
    w = torch.zeros(d, k)
    w[4, 1] = 1.0
    x = torch.arange(n * d, dtype=torch.float32).view(n, d).remainder(5)
    bias = torch.full((d,), 0.5) if with_bias else None
    y = x + (0.5 if with_bias else 0.0)
    for fn in (kernels.fused_projection_error, fused_projection_error_reference):
        stats = fn(h, w, x, y, [tau], bias=bias, return_per_token=True)
        assert stats.counts.tolist() == [5]
        assert stats.max_error == tau + 2**-10
        assert stats.per_token_sq[:5].tolist() == [tau**2] * 5


@interpreted
@pytest.mark.parametrize("where", ["h", "residual", "target", "bias"])
def test_nan_propagates_to_max_and_is_never_counted(where):
    h, w, x, y, b = _inputs(20, 8, 24, torch.float32, seed=5)
    if where == "bias":
        b[2] = math.nan
    else:
        {"h": h, "residual": x, "target": y}[where][7, 2] = math.nan
    taus = [1e9, math.inf]
    ref = fused_projection_error_reference(h, w, x, y, taus, bias=b, return_per_token=True)
    mine = kernels.fused_projection_error(h, w, x, y, taus, bias=b, return_per_token=True)
    _assert_same(mine, ref)
    assert math.isnan(mine.max_error) and math.isnan(mine.sum_error)
    nan_rows = 20 if where == "bias" else 1  # a NaN bias entry poisons every token
    assert mine.counts.tolist() == [20 - nan_rows] * 2
    assert int(mine.per_token_sq.isnan().sum()) == nan_rows


@interpreted
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_pair_nan_in_half_precision(dtype):
    _, _, x, y, _ = _inputs(33, 1, 18, dtype, seed=9)
    x[0, 17] = math.nan
    _assert_same(kernels.pair_error(x, y, [100.0]), pair_error_reference(x, y, [100.0]))


@interpreted
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_huge_values_overflow_to_inf_like_the_reference():
    """fp32 squares overflow to inf: e_t = inf, counted only at tau = inf, in both."""
    h, w, x, y, _ = _inputs(9, 4, 12, torch.float32, seed=6)
    x[2] = 1e30
    taus = [1.0, 1e30, math.inf]
    for mine, ref in [
        (kernels.pair_error(x, y, taus, True), pair_error_reference(x, y, taus, True)),
        (
            kernels.fused_projection_error(h, w, x, y, taus, return_per_token=True),
            fused_projection_error_reference(h, w, x, y, taus, return_per_token=True),
        ),
    ]:
        _assert_same(mine, ref)
        assert mine.max_error == math.inf and mine.sum_sq_error == math.inf
        assert mine.counts[2] == 9 and mine.counts[1] == 8
        assert mine.per_token_sq[2] == math.inf


@interpreted
def test_half_precision_extremes_do_not_overflow():
    """Differences of fp16 maxima (65504 - -65504) are squared in fp32, not fp16."""
    x = torch.full((3, 40), 65504.0, dtype=torch.float16)
    y = -x
    taus = [8e5, 1e6]  # e_t = 131008 * sqrt(40) ~ 8.29e5
    mine, ref = kernels.pair_error(x, y, taus), pair_error_reference(x, y, taus)
    _assert_same(mine, ref)
    assert mine.max_error == pytest.approx(131008 * math.sqrt(40), rel=1e-6)
    assert mine.counts.tolist() == [0, 3]


@interpreted
def test_merge_combines_batches():
    h, w, x, y, _ = _inputs(30, 8, 16, torch.float32, seed=7)
    taus = [2.0, 4.0, 5.0, 6.0]
    whole = fused_projection_error_reference(h, w, x, y, taus, return_per_token=True)
    a = kernels.fused_projection_error(h[:11], w, x[:11], y[:11], taus, return_per_token=True)
    b = kernels.fused_projection_error(h[11:], w, x[11:], y[11:], taus, return_per_token=True)
    _assert_same(a.merge(b), whole)
    assert b.merge(a).per_token_sq.shape == (30,)
    only_a = kernels.fused_projection_error(h[11:], w, x[11:], y[11:], taus)
    assert a.merge(only_a).per_token_sq is None


@interpreted
def test_empty_batch():
    h, w, x, y, _ = _inputs(0, 4, 8, torch.float32)
    for stats in (
        kernels.fused_projection_error(h, w, x, y, [1.0, 2.0], return_per_token=True),
        kernels.pair_error(x, y, [1.0, 2.0], return_per_token=True),
    ):
        assert (stats.n, stats.max_error, stats.sum_error) == (0, 0.0, 0.0)
        assert stats.counts.tolist() == [0, 0] and stats.per_token_sq.shape == (0,)


# --- plain-torch parts (run in both processes) ----------------------------------------------


def test_merge_keeps_nan():
    x, y = torch.zeros(2, 3), torch.ones(2, 3)
    nan_x = x.clone()
    nan_x[1, 0] = math.nan
    merged = pair_error_reference(x, y, [2.0]).merge(pair_error_reference(nan_x, y, [2.0]))
    assert merged.n == 4 and math.isnan(merged.max_error)
    assert merged.counts.tolist() == [3]


@pytest.mark.parametrize(
    "thresholds", [[1.0, 2.0], (1.0, 2.0), torch.tensor([1.0, 2.0]), torch.tensor([[1.0, 2.0]])]
)
def test_threshold_forms(thresholds):
    x, y = torch.zeros(3, 4), torch.ones(3, 4)  # e_t = 2
    assert pair_error_reference(x, y, thresholds).counts.tolist() == [0, 3]
    assert pair_error_reference(x, y, 2.0).counts.tolist() == [3]
    assert pair_error_reference(x, y, []).counts.shape == (0,)


@pytest.mark.parametrize(
    "fn", [fused_projection_error_reference, kernels.fused_projection_error], ids=["ref", "fused"]
)
def test_projection_shape_errors_are_clear(fn):
    h, w, x, y, b = _inputs(4, 3, 5, torch.float32)
    with pytest.raises(ValueError, match="residual has shape"):
        fn(h, w, x[:, :4], y, [1.0])
    with pytest.raises(ValueError, match="h has shape"):
        fn(h[:, :2], w, x, y, [1.0])
    with pytest.raises(ValueError, match="weight must be"):
        fn(h, w[0], x, y, [1.0])
    with pytest.raises(ValueError, match="token counts differ"):
        fn(h, w, x[:3], y, [1.0])
    with pytest.raises(ValueError, match="bias must be"):
        fn(h, w, x, y, [1.0], bias=b[:4])


@pytest.mark.parametrize("fn", [pair_error_reference, kernels.pair_error], ids=["ref", "fused"])
def test_pair_shape_errors_are_clear(fn):
    x, y = torch.zeros(4, 5), torch.zeros(3, 5)
    with pytest.raises(ValueError, match="token counts differ"):
        fn(x, y, [1.0])
    with pytest.raises(ValueError, match="target has shape"):
        fn(x, torch.zeros(4, 6), [1.0])


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


def test_package_kernels_import_beside_an_unrelated_top_level_kernels(tmp_path):
    """An unrelated top-level `kernels` distribution resolves as `kernels`, also from the
    repository root (where the top-level kernels/ folder is a namespace portion, no package),
    and blockcert's kernels as blockcert.kernels."""
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("UNRELATED = True\n")
    code = (
        "import kernels, blockcert.kernels.cert_reduce as bk; "
        "assert kernels.UNRELATED; assert callable(bk.fused_projection_error); print('ok')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
