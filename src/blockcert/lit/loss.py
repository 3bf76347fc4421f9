"""Differentiable per-token error for the training loss (plain torch, custom backward).

e_t = ||pred_t - target_t||_2 in fp32 (fp64 inputs stay fp64). Certificates use the fused
reductions in blockcert.kernels; training only needs this gradient.
"""

from __future__ import annotations

import torch


class _PerTokenError(torch.autograd.Function):
    """e_t = ||pred_t - target_t||; d e_t / d pred_t = diff_t / e_t, taken as 0 where e_t = 0."""

    @staticmethod
    def forward(ctx, pred, target):
        # fp32 at least; fp64 inputs stay fp64 (gradcheck)
        dtype = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)
        diff = pred.to(dtype) - target.to(dtype)
        err = diff.pow(2).sum(-1).sqrt()
        ctx.save_for_backward(diff, err)
        ctx.dtypes = (pred.dtype, target.dtype)
        return err.reshape(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        diff, err = ctx.saved_tensors
        positive = err > 0
        scale = torch.where(positive, grad.reshape(err.shape) / torch.where(positive, err, 1), 0)
        g = diff * scale[..., None]
        grad_pred = g.to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
        grad_target = (-g).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
        return grad_pred, grad_target


def per_token_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Differentiable e_t [N] (fp32, or fp64 for fp64 inputs) for the training loss.

    The backward is plain torch (not fused): training uses this, certificates the kernel.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    return _PerTokenError.apply(pred, target)
