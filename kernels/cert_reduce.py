"""Fused certificate reduction: surrogate output projection + residual + error + reductions.

For hidden activations h [N, k], weight W [d, k] (bias b [d]), residual x [N, d] and teacher
output y [N, d], the kernel computes pred = x + h W^T (+ b) tile by tile and, without writing
pred to memory, the per-token error e_t = ||pred_t - y_t||_2 and its reductions: max, sum,
sum of squares, and for thresholds tau [T] the number of tokens with e_t <= tau_j. Inputs may
be fp16, bf16 or fp32; products and sums accumulate in fp32 (IEEE, no TF32) and e_t is the
correctly rounded sqrt, like the reference. Overflow follows fp32 as in the reference: a token
whose squared error exceeds fp32 range (e.g. a 1e30 entry) has e_t = inf, is counted only for
tau = inf, and makes max and sums inf. A NaN anywhere in a token's row makes e_t NaN: max is
NaN, sums are NaN, and the token is never counted. Extra memory is O(N): the per-token squared
error and per-program partials; the prediction is never written.

`pair_error` is the projection-free variant for an already materialised prediction.
Each has a plain-torch `*_reference` with the same signature. The dispatcher runs Triton on
CUDA tensors, or on CPU tensors when TRITON_INTERPRET=1 was set before Triton was imported
(Triton decides interpreter or compiler when it defines kernels, so tests use a child process);
otherwise the reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
except ImportError:  # pragma: no cover - triton is a Linux dependency
    triton = None


@dataclass(frozen=True)
class ErrorStats:
    """Reductions of per-token errors e_t over n tokens (fp32 accumulation)."""

    n: int
    max_error: float  # NaN if any e_t is NaN
    sum_error: float
    sum_sq_error: float
    counts: torch.Tensor  # int64 [T]: tokens with e_t <= tau_j (NaN never counted)
    per_token_sq: torch.Tensor | None  # fp32 [N] e_t^2, if requested

    def merge(self, other: ErrorStats) -> ErrorStats:
        per_token = None
        if self.per_token_sq is not None and other.per_token_sq is not None:
            per_token = torch.cat([self.per_token_sq, other.per_token_sq])
        if math.isnan(self.max_error) or math.isnan(other.max_error):
            peak = math.nan
        else:
            peak = max(self.max_error, other.max_error)
        return ErrorStats(
            n=self.n + other.n,
            max_error=peak,
            sum_error=self.sum_error + other.sum_error,
            sum_sq_error=self.sum_sq_error + other.sum_sq_error,
            counts=self.counts + other.counts,
            per_token_sq=per_token,
        )


def _thresholds(thresholds, device) -> torch.Tensor:
    """tau as fp32 [T] (e_t is fp32, so both sides of e_t <= tau are compared in fp32)."""
    if not torch.is_tensor(thresholds) and not isinstance(thresholds, int | float):
        thresholds = list(thresholds)
    return torch.as_tensor(thresholds, dtype=torch.float32, device=device).flatten()


def _stats_from_sq(sq: torch.Tensor, tau: torch.Tensor, return_per_token: bool) -> ErrorStats:
    err = sq.sqrt()
    return ErrorStats(
        n=sq.numel(),
        max_error=float(err.max()) if sq.numel() else 0.0,
        sum_error=float(err.sum()),
        sum_sq_error=float(sq.sum()),
        counts=(err[:, None] <= tau[None, :]).sum(0).to(torch.int64).cpu(),
        per_token_sq=sq.cpu() if return_per_token else None,
    )


def _flatten(t: torch.Tensor, d: int, name: str) -> torch.Tensor:
    if t.dim() == 0 or t.shape[-1] != d:
        raise ValueError(f"{name} has shape {tuple(t.shape)}: last dimension must be {d}")
    return t.reshape(-1, d)


def _same_device(**tensors: torch.Tensor | None) -> None:
    present = {name: str(t.device) for name, t in tensors.items() if t is not None}
    if len(set(present.values())) > 1:
        raise ValueError(f"inputs are on different devices {present}: move them to one device")


def _check_projection(h, weight, residual, target, bias):
    if weight.dim() != 2:
        raise ValueError(f"weight must be [d, k], got shape {tuple(weight.shape)}")
    d, k = weight.shape
    h2, x2, y2 = (
        _flatten(h, k, "h"),
        _flatten(residual, d, "residual"),
        _flatten(target, d, "target"),
    )
    if not h2.shape[0] == x2.shape[0] == y2.shape[0]:
        raise ValueError(
            f"token counts differ: h {h2.shape[0]}, residual {x2.shape[0]}, target {y2.shape[0]}"
        )
    if bias is not None and tuple(bias.shape) != (d,):
        raise ValueError(f"bias must be [{d}], got shape {tuple(bias.shape)}")
    _same_device(h=h, weight=weight, residual=residual, target=target, bias=bias)
    return h2, x2, y2


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = pred.shape[-1] if pred.dim() else 0
    p2, y2 = _flatten(pred, d, "pred"), _flatten(target, d, "target")
    if p2.shape[0] != y2.shape[0]:
        raise ValueError(f"token counts differ: pred {p2.shape[0]}, target {y2.shape[0]}")
    _same_device(pred=pred, target=target)
    return p2, y2


def fused_projection_error_reference(
    h: torch.Tensor,
    weight: torch.Tensor,
    residual: torch.Tensor,
    target: torch.Tensor,
    thresholds: Sequence[float] | torch.Tensor,
    bias: torch.Tensor | None = None,
    return_per_token: bool = False,
) -> ErrorStats:
    """Plain torch: pred = x + h W^T (+ b) materialised in fp32."""
    h2, x2, y2 = _check_projection(h, weight, residual, target, bias)
    pred = x2.float() + h2.float() @ weight.float().T
    if bias is not None:
        pred = pred + bias.float()
    sq = (pred - y2.float()).pow(2).sum(-1)
    return _stats_from_sq(sq, _thresholds(thresholds, sq.device), return_per_token)


def pair_error_reference(
    pred: torch.Tensor,
    target: torch.Tensor,
    thresholds: Sequence[float] | torch.Tensor,
    return_per_token: bool = False,
) -> ErrorStats:
    """Plain torch: e_t^2 = sum_d (pred - target)^2 in fp32."""
    p2, y2 = _check_pair(pred, target)
    sq = (p2.float() - y2.float()).pow(2).sum(-1)
    return _stats_from_sq(sq, _thresholds(thresholds, sq.device), return_per_token)


def use_triton(t: torch.Tensor) -> bool:
    """Whether the dispatchers run the Triton kernel for inputs on t's device."""
    return triton is not None and (t.is_cuda or INTERPRET)


if triton is not None:

    @triton.jit
    def _projection_error_kernel(
        h_ptr,
        w_ptr,
        x_ptr,
        y_ptr,
        b_ptr,
        tau_ptr,
        sq_ptr,
        part_max_ptr,
        part_nan_ptr,
        part_sum_ptr,
        part_sumsq_ptr,
        part_count_ptr,
        N,
        D,
        K,
        T,
        stride_h,
        stride_w,
        stride_x,
        stride_y,
        HAS_BIAS: tl.constexpr,
        HAS_PROJ: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_T: tl.constexpr,
    ):
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        sq = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            col_ok = cols < D
            mask = row_ok[:, None] & col_ok[None, :]
            pred = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
            if HAS_PROJ:
                acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
                for k0 in range(0, K, BLOCK_K):
                    ks = k0 + tl.arange(0, BLOCK_K)
                    k_ok = ks < K
                    h = tl.load(
                        h_ptr + rows[:, None] * stride_h + ks[None, :],
                        mask=row_ok[:, None] & k_ok[None, :],
                        other=0.0,
                    )
                    w = tl.load(
                        w_ptr + cols[None, :] * stride_w + ks[:, None],
                        mask=k_ok[:, None] & col_ok[None, :],
                        other=0.0,
                    )
                    acc = tl.dot(h, w, acc, input_precision="ieee", out_dtype=tl.float32)
                pred = acc
            # x is loaded after the K loop so that it is not held in registers during it;
            # (h W^T) + x equals the reference's x + h W^T since fp32 addition commutes
            x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
            pred += x.to(tl.float32)
            if HAS_BIAS:
                bias = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
                pred += bias[None, :]
            y = tl.load(y_ptr + rows[:, None] * stride_y + cols[None, :], mask=mask, other=0.0)
            diff = tl.where(mask, pred - y.to(tl.float32), 0.0)
            sq += tl.sum(diff * diff, axis=1)
        tl.store(sq_ptr + rows, sq, mask=row_ok)
        # sqrt_rn, not tl.sqrt (approximate on GPU): e_t == tau ties must match the reference
        err = tl.sqrt_rn(sq)
        is_nan = err != err
        valid = row_ok & (~is_nan)
        tl.store(part_max_ptr + pid, tl.max(tl.where(valid, err, 0.0), axis=0))
        tl.store(part_nan_ptr + pid, tl.sum((row_ok & is_nan).to(tl.int32), axis=0))
        tl.store(part_sum_ptr + pid, tl.sum(tl.where(row_ok, err, 0.0), axis=0))
        tl.store(part_sumsq_ptr + pid, tl.sum(tl.where(row_ok, sq, 0.0), axis=0))
        taus = tl.arange(0, BLOCK_T)
        tau = tl.load(tau_ptr + taus, mask=taus < T, other=-1.0)
        hit = (err[:, None] <= tau[None, :]) & valid[:, None] & (taus < T)[None, :]
        tl.store(part_count_ptr + pid * BLOCK_T + taus, tl.sum(hit.to(tl.int32), axis=0))

    # (BLOCK_N, BLOCK_D, BLOCK_K, num_warps); tl.dot needs every block >= 16
    _GPU_BLOCKS = [
        (64, 64, 32, 4),
        (64, 128, 32, 4),
        (128, 64, 32, 8),
        (128, 128, 32, 8),
        (32, 128, 64, 4),
        (64, 256, 32, 8),
    ]
    _AUTOTUNED = triton.autotune(
        configs=[
            triton.Config({"BLOCK_N": bn, "BLOCK_D": bd, "BLOCK_K": bk}, num_warps=w)
            for bn, bd, bk, w in _GPU_BLOCKS
        ],
        key=["D", "K", "HAS_PROJ"],  # the autotuner adds the tensors' dtypes to the key
    )(_projection_error_kernel)
    # one small fixed config under the interpreter, where autotuning would only cost time
    _INTERPRETER_META = {"BLOCK_N": 16, "BLOCK_D": 16, "BLOCK_K": 16}
    _MIN_BLOCK_N = min([bn for bn, *_ in _GPU_BLOCKS] + [_INTERPRETER_META["BLOCK_N"]])

# Triton chose interpreter or compiler when it defined the kernel (TRITON_INTERPRET at import)
INTERPRET = triton is not None and isinstance(_projection_error_kernel, InterpretedFunction)


def _launch(h, w, x, y, bias, tau, has_proj: bool, return_per_token: bool) -> ErrorStats:
    n, d = x.shape
    k = w.shape[1] if has_proj else 1
    n_tau = tau.numel()
    device = x.device
    sq = torch.empty(n, dtype=torch.float32, device=device)
    block_t = triton.next_power_of_2(max(1, n_tau))
    if INTERPRET and not x.is_cuda:
        meta, kernel = dict(_INTERPRETER_META), _projection_error_kernel
    else:
        meta, kernel = {}, _AUTOTUNED
    # per-program partials, sized for the smallest BLOCK_N the autotuner may pick
    max_programs = triton.cdiv(n, _MIN_BLOCK_N)
    part_max = torch.zeros(max_programs, dtype=torch.float32, device=device)
    part_nan = torch.zeros(max_programs, dtype=torch.int32, device=device)
    part_sum = torch.zeros(max_programs, dtype=torch.float32, device=device)
    part_sumsq = torch.zeros(max_programs, dtype=torch.float32, device=device)
    part_count = torch.zeros(max_programs * block_t, dtype=torch.int32, device=device)
    grid = lambda m: (triton.cdiv(n, m["BLOCK_N"]),)  # noqa: E731
    h_arg = h if has_proj else x  # placeholders: never read when HAS_PROJ / HAS_BIAS is off
    w_arg = w if has_proj else x
    kernel[grid](
        h_arg,
        w_arg,
        x,
        y,
        bias if bias is not None else x,
        tau,
        sq,
        part_max,
        part_nan,
        part_sum,
        part_sumsq,
        part_count,
        n,
        d,
        k,
        n_tau,
        h_arg.stride(0),
        w_arg.stride(0),
        x.stride(0),
        y.stride(0),
        HAS_BIAS=bias is not None,
        HAS_PROJ=has_proj,
        BLOCK_T=block_t,
        **meta,
    )
    # the last launch used the best config; entries past its program count are stale
    programs = triton.cdiv(n, meta["BLOCK_N"] if meta else kernel.best_config.kwargs["BLOCK_N"])
    counts = part_count[: programs * block_t].view(programs, block_t).sum(0)[:n_tau]
    totals = torch.cat(
        [
            torch.stack(
                [
                    part_nan[:programs].sum().double(),
                    part_max[:programs].max().double(),
                    part_sum[:programs].double().sum(),
                    part_sumsq[:programs].double().sum(),
                ]
            ),
            counts.double(),  # exact: counts < 2**53
        ]
    ).cpu()  # one device sync for all reductions
    n_nan, peak, sum_error, sum_sq_error = totals[:4].tolist()
    return ErrorStats(
        n=n,
        max_error=math.nan if n_nan else peak,
        sum_error=sum_error,
        sum_sq_error=sum_sq_error,
        counts=totals[4:].to(torch.int64),
        per_token_sq=sq.cpu() if return_per_token else None,
    )


def fused_projection_error(
    h: torch.Tensor,
    weight: torch.Tensor,
    residual: torch.Tensor,
    target: torch.Tensor,
    thresholds: Sequence[float] | torch.Tensor,
    bias: torch.Tensor | None = None,
    return_per_token: bool = False,
) -> ErrorStats:
    """Fused pred = x + h W^T (+ b) and error reductions; see the module docstring."""
    if not use_triton(residual):
        return fused_projection_error_reference(
            h, weight, residual, target, thresholds, bias, return_per_token
        )
    h2, x2, y2 = _check_projection(h, weight, residual, target, bias)
    if h2.shape[0] == 0:
        return fused_projection_error_reference(
            h2, weight, x2, y2, thresholds, bias, return_per_token
        )
    if h2.dtype != weight.dtype or (INTERPRET and h2.dtype == torch.bfloat16 and not h2.is_cuda):
        # tl.dot needs one operand dtype; the interpreter's bf16 dot is wrong, and bf16 -> fp32
        # is exact, so upcasting there gives the same fp32-accumulated products
        h2, weight = h2.float(), weight.float()
    tau = _thresholds(thresholds, x2.device)
    return _launch(
        h2.contiguous(),
        weight.contiguous(),
        x2.contiguous(),
        y2.contiguous(),
        None if bias is None else bias.contiguous(),
        tau,
        True,
        return_per_token,
    )


def pair_error(
    pred: torch.Tensor,
    target: torch.Tensor,
    thresholds: Sequence[float] | torch.Tensor,
    return_per_token: bool = False,
) -> ErrorStats:
    """Error reductions of an already materialised prediction (same kernel, no projection)."""
    if not use_triton(pred):
        return pair_error_reference(pred, target, thresholds, return_per_token)
    p2, y2 = _check_pair(pred, target)
    if p2.shape[0] == 0:
        return pair_error_reference(p2, y2, thresholds, return_per_token)
    tau = _thresholds(thresholds, p2.device)
    return _launch(None, None, p2.contiguous(), y2.contiguous(), None, tau, False, return_per_token)
