"""Tube shells: the tube cut into n shells of radius r i/n, and the per-token rows on each.

Along the segment from the tube's centre to any point X' of it, the Jacobian bound of shell i
holds between radii r(i-1)/n and r i/n, so by the mean value theorem
d(g(X')_t, g(X)_t) / d(X', X) is at most the mean over shells of their running maximum, and
the attention output moves by at most (r/n) sum_(j<=i) of its shell bounds (a narrower tube
for the MLP). The per-token constant is the shell mean of (1 + Latt_t)(1 + Lmlp_t), since
||dy_t|| <= (1 + Latt_t) delta and ||dout_t|| <= (1 + Lmlp_t) ||dy_t||.
Derivation: docs/soundness.md#tube-shells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from blockcert.cert.lipschitz.attention import attention_rows
from blockcert.cert.lipschitz.folded import FoldedBlock
from blockcert.cert.lipschitz.margins import REL_MARGIN
from blockcert.cert.lipschitz.mlp import mlp_rows_screen, mlp_state
from blockcert.cert.lipschitz.saturation import saturation_rows

Tensor = torch.Tensor


def shell_radii(r: float, shells: int) -> tuple[list[float], list[float]]:
    """(outer radius, width) of every shell; the last radius is r itself (r * n / n may round
    below r), and the widths are the differences of the radii actually used."""
    radii = [r * i / shells for i in range(1, shells)] + [r]
    widths = [radii[0]] + [b - a for a, b in zip(radii, radii[1:], strict=False)]
    return radii, widths


def shell_mean(total: Tensor, r: float) -> Tensor:
    """[n, T] shell bounds -> [T]: the mean over shells of their running maximum, which bounds
    d(g(X')_t, g(X)_t) / d(X', X) for every X' in the tube (mean value theorem along the segment
    from the centre: the bound of shell i holds on the part of it between r_(i-1) and r_i, and
    the mean of a non-decreasing step function over [0, rho] grows with rho); never above the
    bound of the whole tube (the last shell), which holds as well."""
    if len(total) == 1 or r <= 0:
        return total[-1]
    _, widths = shell_radii(r, len(total))
    weights = torch.tensor(widths, dtype=total.dtype)[:, None] / r
    mean = (torch.cummax(total, dim=0).values * weights).sum(0) * (1 + REL_MARGIN)
    return torch.minimum(mean, total[-1])


@dataclass(frozen=True, eq=False)
class PromptRows:
    """Per-token bounds of one prompt on each shell radius r i/n (rows i = 0..n-1)."""

    latt: Tensor  # [n, T]
    move: Tensor  # [n, T] how far attn_out_t moves on each shell (before the shell integral)
    screen: Tensor  # [n, T] Lmlp before refinement
    pert: Tensor  # [n, T] tube part of Lmlp, before lambda2
    lam2: Tensor  # [n, T]
    rho: Tensor  # [n, T] how far the normalised MLP input moves (lambda2 r_y)
    spread: Tensor  # [n, T] mlp_bilinear.tube_spread where computed (inf elsewhere)
    z: Tensor  # [T, k m] centre Jacobian coefficients
    saturation: Tensor  # [T] on the whole tube
    min_norm: Tensor  # min_t ||x_t|| (the attention norm's centred input)


def prompt_rows(
    f: FoldedBlock,
    cen: dict,
    r: float,
    shells: int,
    aligned: Tensor | None = None,
    first: PromptRows | None = None,
    joint: bool = False,
) -> PromptRows:
    """Shell i holds the points at distance <= r_i = r i/n from the centre. On the segment from
    the centre to X' the points between distances r_(i-1) and r_i lie in shell i, so with the
    running maximum Lt_i of the shell bounds, ||attn_out(X')_t - attn_out(X)_t|| <=
    (r/n) sum_(j<=i) Lt_att,j (mean value theorem): a direct bound on how far the attention
    output moves, tighter than Latt_i r_i when Latt grows over the tube. aligned: the tokens
    whose attention rows get the costlier aligned bounds (attention.attention_rows; with
    joint, also the joint bound); the other rows keep those of `first` (an earlier pass)."""
    rows = {"latt": [], "move": [], "screen": [], "pert": [], "lam2": [], "rho": []}
    running, integral = None, None
    for i, (radius, width) in enumerate(zip(*shell_radii(r, shells), strict=True)):
        base = None if first is None else (first.latt[i], first.move[i])
        latt, move, _ = attention_rows(f, cen, radius, aligned, base, joint)
        rows["move"].append(move)
        running = latt if running is None else torch.maximum(running, latt)
        part = running * width
        integral = part if integral is None else integral + part
        move = torch.minimum(move, integral * (1 + REL_MARGIN))
        r_y = radius + move
        z, eta, lam2 = mlp_state(f, cen, r_y)
        frob, pert = mlp_rows_screen(f, cen, z, eta, lam2 * r_y)
        for key, value in (("latt", latt), ("screen", lam2 * (frob + pert)), ("pert", pert)):
            rows[key].append(value)
        rows["lam2"].append(lam2)
        rows["rho"].append(lam2 * r_y)
    saturation = saturation_rows(f, cen, move, lam2 * r_y)
    stacked = {key: torch.stack(value) for key, value in rows.items()}
    spread = torch.full_like(stacked["pert"], math.inf)
    return PromptRows(
        **stacked, spread=spread, z=z, saturation=saturation, min_norm=cen["xnorm"].min()
    )


def prompt_constants(rows: PromptRows, lmlp: Tensor, r: float) -> Tensor:
    """[T] per-token constants: the shell mean of (1 + Latt)(1 + Lmlp)."""
    return shell_mean((1 + rows.latt) * (1 + lmlp), r)
