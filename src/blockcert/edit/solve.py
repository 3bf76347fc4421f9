"""Closed-form update of the down projection W `[d, m]` that writes values at keys.

ROME (Meng et al. 2022, eq. 2 and Appendix A): minimise ||W' K0 - V0|| (preserve the memory on
the keys K0 of ordinary text) subject to W' k* = v*; with C = K0 K0^T / N the solution is the
rank-one update
    dW = (v* - W k*) (C^-1 k*)^T / (k*^T C^-1 k*).
For n facts with keys K = [k*_1 .. k*_n] `[m, n]` and residuals R = [v*_j - W k*_j] `[d, n]`
the equality-constrained problem  min tr(dW C dW^T)  s.t.  dW K = R  has the solution
    dW = R (K^T C^-1 K)^-1 K^T C^-1                                     (lambda = 0)
(ROME's formula for n = 1). MEMIT (Meng et al. 2023, eq. 14) relaxes the constraint to least
squares with weight lambda on the preserved keys, dW = R K^T (lambda C + K K^T)^-1, which by
the Woodbury identity equals
    dW = R (lambda I + K^T C^-1 K)^-1 K^T C^-1                          (lambda > 0)
and tends to the constrained solution as lambda -> 0. The n x n form is what is computed: it
never inverts an m x m matrix other than through one Cholesky solve with C.
"""

from __future__ import annotations

import torch

from blockcert.errors import BlockCertError


def regularised(second_moment: torch.Tensor, ridge: float) -> torch.Tensor:
    """C + ridge * (tr C / m) I: keeps C invertible when few tokens span the key space."""
    m = second_moment.shape[0]
    scale = float(torch.trace(second_moment)) / m
    return second_moment + ridge * scale * torch.eye(m, dtype=second_moment.dtype)


def memory_update(
    second_moment: torch.Tensor, keys: torch.Tensor, residuals: torch.Tensor, lam: float = 0.0
) -> torch.Tensor:
    """dW `[d, m]` float64 from C `[m, m]`, K `[m, n]`, R `[d, n]` (formulas above)."""
    c, k, r = second_moment.double(), keys.double(), residuals.double()
    try:
        factor = torch.linalg.cholesky(c)
    except RuntimeError:
        raise BlockCertError(
            "the key covariance is singular; raise edit.cov_ridge or use more training prompts."
        ) from None
    c_inv_k = torch.cholesky_solve(k, factor)  # C^-1 K  [m, n]
    gram = k.T @ c_inv_k + lam * torch.eye(k.shape[1], dtype=torch.float64)
    try:
        # dW = R gram^-1 (C^-1 K)^T; gram is symmetric positive (semi)definite
        return r @ torch.linalg.solve(gram, c_inv_k.T)
    except RuntimeError:
        raise BlockCertError(
            "the facts' keys are linearly dependent (same subject twice?); merge those facts or "
            "set edit.memit_lambda > 0."
        ) from None
