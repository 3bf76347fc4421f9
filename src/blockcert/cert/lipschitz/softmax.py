"""The softmax weights anywhere on the tube, from the logit shifts Delta_ts >= |z'_ts - z_ts|.

p'_ts / p_ts = e^(e_ts) / sum_u p_tu e^(e_tu) with |e_ts| <= Delta_ts, so by Jensen
p'_ts / p_ts lies in [e^-(Delta_ts + Omega_t), e^(Delta_ts + Omega_t)] with
Omega_t = log sum_s p_ts e^(Delta_ts) <= Delta_t = max_s Delta_ts, and (Popoviciu: the mean
absolute deviation of dz is at most half its range) ||p' - p||_1 <= min(2, Delta_t). Sums of
centred deviations (sum_s p_ts w_s = 0) take coefficients without the normaliser term.
Derivation: docs/soundness.md#attention-rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from blockcert.cert.lipschitz.margins import REL_MARGIN

Tensor = torch.Tensor


@dataclass(frozen=True, eq=False)
class TubeSoftmax:
    """Bounds on the softmax weights p' at every point of the tube, [H, t, s] unless noted
    (0 off the causal mask)."""

    p: Tensor  # the centre's weights
    log_p: Tensor  # log p (-inf where p = 0)
    shift: Tensor  # Delta_ts >= |z'_ts - z_ts|, with its rounding margin
    delta: Tensor  # [H, t] Delta_t = max_s Delta_ts
    omega: Tensor  # [H, t] >= Omega_t = log sum_s p_ts e^(Delta_ts)
    upper: Tensor  # >= p'
    moved: Tensor  # >= |p' - p|
    l1: Tensor  # [H, t] >= ||p' - p||_1
    centred: Tensor  # centred_weights where usable (rows with every coefficient <= 1), else 0
    centred_ok: Tensor  # [H, t] bool: rows whose centred coefficients are usable


def tube_softmax(p: Tensor, shift: Tensor, causal: Tensor) -> TubeSoftmax:
    """TubeSoftmax of the centre weights p [H, t, s] under logit shifts |z' - z| <= shift
    [H, t, s] (causal [t, s]: the sources each query row reads)."""
    delta = shift.masked_fill(~causal, 0.0).amax(-1) * (1 + REL_MARGIN)  # [H, T]
    # z' - z = e_ts in [-Delta_ts, Delta_ts], p'_ts / p_ts = e^(e_ts) / sum_u p_tu e^(e_tu), and
    # by Jensen e^(-sum_u p_tu Delta_tu) <= sum_u p_tu e^(e_tu) <= e^(Omega_t) with
    # Omega_t = log sum_u p_tu e^(Delta_tu) (>= the p-mean of Delta, <= its max), so
    # p'_ts / p_ts lies in [1/grow_ts, grow_ts] with grow_ts = e^(Delta_ts + Omega_t)
    # (in log space, so no exponent overflows; Omega >= 0 exactly, and the clamp and margins
    # cover the float64 rounding of p, exp and log)
    shift = shift.masked_fill(~causal, 0.0) * (1 + REL_MARGIN)
    log_p = torch.log(p)  # -inf where p = 0
    omega = torch.logsumexp(log_p + shift, dim=-1).clamp_min(0.0) * (1 + REL_MARGIN) + 1e-12
    log_grow = shift + torch.minimum(omega, delta)[..., None]
    pu = torch.exp((log_p + log_grow).clamp_max(0.0)).masked_fill(~causal, 0.0)  # >= p'
    moved = torch.minimum(p * torch.expm1(log_grow), torch.ones_like(p))
    moved_p = torch.where(p > 0, moved, 0.0).masked_fill(~causal, 0.0)  # >= |p' - p|
    # sums of the centred deviations w_s (sum_s p_ts w_s = 0) may take centred_p >=
    # |e^(-Omega') p_s (e^(e_s) - 1)| as coefficients instead of |p' - p| (centred_weights)
    # (rows where one exceeds 1, at radii near the tokens' norms, do not use them: |p' - p| <= 1)
    centred_p = centred_weights(log_p, p, shift).masked_fill(~causal, 0.0)
    centred_ok = (centred_p <= 1.0).all(-1)  # [H, t]
    centred_p = centred_p.masked_fill(~centred_ok[..., None], 0.0)
    return TubeSoftmax(
        p=p,
        log_p=log_p,
        shift=shift,
        delta=delta,
        omega=omega,
        upper=pu,
        moved=moved_p,
        l1=delta.clamp_max(2.0),  # ||p' - p||_1
        centred=centred_p,
        centred_ok=centred_ok,
    )


def centred_weights(log_p: Tensor, p: Tensor, shift: Tensor) -> Tensor:
    """[H, t, s] coefficients for sums of centred deviations (sum_s p_ts w_s = 0) on the tube.

    With e_s = z'_s - z_s (|e_s| <= Delta_s = shift) and Omega' = log sum_s p_s e^(e_s), p'_s =
    p_s e^(e_s - Omega'), so sum_s (p'_s - p_s) w_s = e^(-Omega') sum_s p_s (e^(e_s) - 1) w_s
    (twice sum_s p_s w_s = 0), and e^(-Omega') <= e^(sum_s p_s Delta_s) (Jensen), |e^(e_s) - 1|
    <= e^(Delta_s) - 1: the coefficient p_s (e^(Delta_s) - 1) e^(p . Delta) has no normaliser
    term, where |p' - p| <= p (e^(Delta_s + Omega) - 1) has one (about half of it for even
    shifts). Log space, like the weights' own bounds."""
    mean = (p * shift).sum(-1, keepdim=True)
    return torch.exp(log_p + torch.log(torch.expm1(shift)) + mean) * (1 + REL_MARGIN)


def drift(p: Tensor, shift: Tensor, omega: Tensor) -> Tensor:
    """[H, t] >= |e^(-Omega') - 1| on the tube, for sums that are not centred.

    With p'_s = p_s e^(e_s - Omega') (centred_weights), sum_s (p'_s - p_s) X_s =
    e^(-Omega') sum_s p_s (e^(e_s) - 1) X_s + (e^(-Omega') - 1) sum_s p_s X_s: the
    centred_weights coefficients on the sources and this drift on the centre's own sum (often
    far below sum_s p_s ||X_s||). Omega' = log sum_s p_s e^(e_s) lies in [-p . Delta, omega]
    (Jensen; omega >= log sum_s p_s e^(Delta_s)).
    """
    low = torch.expm1((p * shift).sum(-1))  # e^(p . Delta) - 1
    return torch.maximum(low, -torch.expm1(-omega)) * (1 + REL_MARGIN)
