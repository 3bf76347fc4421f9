"""Sound constants of a pre-norm block: the per-prompt passes and the max over tokens.

Block: u = norm1(x); y = x + A(u); out = y + M(norm2(y)); distance d(X, Y) = max_t
||X_t - Y_t||_2 on sequences, tube T_r = {X' : d(X', X) <= r} around each evaluated teacher
input X. By the mean value theorem along the segment X -> X', d(g(X'), g(X)) <= sup over the
tube of ||J_g||_(inf,2) d(X', X), and per token ||dy_t|| <= (1 + Latt_t) delta, r_y,t = r +
min(Latt_t r, move_t), ||dout_t|| <= (1 + Lmlp_t) ||dy_t||, so
L = max_t (1 + Latt_t)(1 + Lmlp_t) (shell-averaged: blockcert.cert.lipschitz.shells), and the
saturation constant a = max_t a_t (blockcert.cert.lipschitz.saturation). Per prompt: the
per-source rows; the spectral MLP bound where it can decide the max; the aligned attention
rows on the ALIGNED_TOKENS largest; refinement until it settles; the joint rows on request.
Derivation: docs/soundness.md#distance-and-composition.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from blockcert.cert.lipschitz.folded import FoldedBlock, FoldedRange, fold_block, fold_range
from blockcert.cert.lipschitz.forward64 import forward64
from blockcert.cert.lipschitz.refine import CentreMlp, mlp_rows, refine_rows, tube_spread_rows
from blockcert.cert.lipschitz.saturation import saturated_step
from blockcert.cert.lipschitz.shells import PromptRows, prompt_constants, prompt_rows
from blockcert.surrogate.ir import Surrogate
from blockcert.surrogate.view import block_view

Tensor = torch.Tensor

ALIGNED_TOKENS = 64  # per prompt: tokens whose attention rows get the aligned bounds


@dataclass
class SoundBlockBound:
    """lipschitz: max_t of the per-token constant (1 + Latt_t)(1 + Lmlp_t), averaged over the
    tube's shells when shells > 1 (inf when a norm is singular on the tube, which needs
    eps = 0, or when not computed because the chain's step is B + a: saturated_step);
    saturation: a with d(g(y), g(x)) <= d(y, x) + a for every y in the tube."""

    lipschitz: float
    saturation: float
    attention: float | None  # max_t Latt_t on the whole tube (None: not computed)
    mlp: float | None  # max_t Lmlp_t on the whole tube (None: not computed)
    min_input_norm: float
    tokens: int
    prompts: int
    refined: int
    shells: int
    saturated_step: bool = False  # L not computed: the chain's step is B + a (_saturated_step)


def two_pass_rows(
    f: FoldedBlock,
    cen: dict,
    r: float,
    shells: int,
    refine: int | None,
    floor: float,
    joint_tokens: int | None = 0,
) -> tuple[PromptRows, Tensor, CentreMlp]:
    """(rows, lmlp, spec) of one prompt: the per-source bounds; the spectral MLP bound on the
    tokens that can decide the max (refine_rows); the aligned attention bounds on the
    ALIGNED_TOKENS tokens with the largest constant after that (the same bounds with extra
    minima, so every row is at most the first pass's; the other rows are not recomputed); then
    the spectral bound again on any token that can now decide the max; then the joint bound on
    joint_tokens rows (_joint_rows)."""
    rows = prompt_rows(f, cen, r, shells)
    spec = CentreMlp.unknown(rows.z.shape[0])
    budget = rows.z.shape[0] if refine is None else refine
    # one round only: it orders the tokens for the aligned pass; the later calls settle
    budget -= refine_rows(f, cen, rows, r, spec, budget, floor)
    score = prompt_constants(rows, mlp_rows(rows, spec), r)
    top = torch.argsort(score, descending=True)[:ALIGNED_TOKENS]
    if len(top) and torch.isfinite(score[top]).all():
        rows = prompt_rows(f, cen, r, shells, top, rows)
        tube_spread_rows(f, cen, rows, spec, torch.isfinite(spec.bilinear).nonzero()[:, 0])
        budget -= refine_rows(f, cen, rows, r, spec, budget, floor, settle=True)
        rows = _joint_rows(f, cen, r, shells, rows, spec, budget, floor, joint_tokens)
    return rows, mlp_rows(rows, spec), spec


def _joint_rows(
    f: FoldedBlock,
    cen: dict,
    r: float,
    shells: int,
    rows: PromptRows,
    spec: CentreMlp,
    budget: int,
    floor: float,
    joint_tokens: int | None,
) -> PromptRows:
    """The joint attention bound (attention_joint; ~30 ms a row on SmolLM2) on the
    joint_tokens rows with the largest constant (None: every row) in one pass, the other rows
    kept; the MLP's spectral bound follows on the rows that can now decide the max."""
    count = rows.z.shape[0] if joint_tokens is None else min(joint_tokens, rows.z.shape[0])
    if count <= 0:
        return rows
    score = prompt_constants(rows, mlp_rows(rows, spec), r)
    if not torch.isfinite(score).all():
        return rows
    top = torch.argsort(score, descending=True)[:count]
    rows = prompt_rows(f, cen, r, shells, top, rows, joint=True)
    tube_spread_rows(f, cen, rows, spec, torch.isfinite(spec.bilinear).nonzero()[:, 0])
    refine_rows(f, cen, rows, r, spec, budget, floor, settle=True)
    return rows


def _saturated_step(
    rng: FoldedRange, prompts: list[Tensor], r: float, shells: int, bound: float
) -> SoundBlockBound | None:
    """The chain's step from B = bound when it is B + a whatever L the passes could give
    (saturation.saturated_step): L is not computed (lipschitz = inf, saturated_step) and a is
    the bound for any input. None when the estimate does not settle the step (the caller runs
    every pass)."""
    saturation = saturated_step(rng, prompts, r, shells, bound)
    if saturation is None:
        return None
    return SoundBlockBound(
        lipschitz=math.inf,
        saturation=saturation,
        attention=None,
        mlp=None,
        min_input_norm=float(min(x.double().norm(dim=-1).min() for x in prompts)),
        tokens=sum(x.shape[0] for x in prompts),
        prompts=len(prompts),
        refined=0,
        shells=shells,
        saturated_step=True,
    )


def _summarise(
    done: list[tuple[PromptRows, Tensor]],
    r: float,
    shells: int,
    refined: int,
) -> SoundBlockBound:
    """The block's constants from every prompt's rows and Lmlp [n, T] (the max over tokens)."""
    per_token = torch.cat([prompt_constants(rows, lmlp, r) for rows, lmlp in done])
    return SoundBlockBound(
        lipschitz=float(per_token.max()),
        saturation=float(torch.cat([rows.saturation for rows, _ in done]).max()),
        attention=float(torch.cat([rows.latt[-1] for rows, _ in done]).max()),
        mlp=float(torch.cat([lmlp[-1] for _, lmlp in done]).max()),
        min_input_norm=float(torch.stack([rows.min_norm for rows, _ in done]).min()),
        tokens=per_token.numel(),
        prompts=len(done),
        refined=refined,
        shells=shells,
    )


def sound_block_bound(
    surrogate: Surrogate,
    inputs: Iterable[Tensor],
    radius: float,
    max_refine: int | None = None,
    shells: int = 1,
    saturates_from: float | None = None,
    joint_tokens: int | None = 0,
) -> SoundBlockBound:
    """Sound constants of `surrogate` on the tube of `radius` around `inputs` ([b, T, d] each).

    shells: cut the tube into that many shells (each costs one more evaluation of the per-token
    bounds); 1 is the bound of the whole tube. max_refine: at most that many tokens per prompt
    get the spectral MLP bound (~15 ms each on SmolLM2; None: every token that can decide the
    max); the other tokens keep the Frobenius screen, which holds as well. saturates_from: the
    chain's B_(k-1) when the caller composes min(L B, B + a); where a centre forward alone shows
    that no pass can bring L below 1 + a / B, L is not computed (saturated_step, lipschitz inf)
    and a is the bound for any input (_saturated_step)."""
    if shells < 1:
        raise ValueError(f"shells={shells}: cut the tube into at least 1 shell")
    view = block_view(surrogate)
    r = float(radius)
    prompts = [x for batch in inputs for x in batch.reshape(-1, *batch.shape[-2:])]
    with torch.no_grad():
        # tried only where B is well above the typical token norm: there both caps of a bind,
        # and below it lambda stays small and the estimate rarely settles the step
        if saturates_from is not None:
            typical = max((float(x.norm(dim=-1).median()) for x in prompts), default=math.inf)
            if saturates_from >= 10 * typical:
                quick = _saturated_step(fold_range(view), prompts, r, shells, saturates_from)
                if quick is not None:
                    return quick
        f = fold_block(view)
        # one prompt at a time: its centre values and cached terms are dropped before the next
        done, floor, refined = [], 0.0, 0
        for x in prompts:
            cen = forward64(view, x)
            rows, mlp, spec = two_pass_rows(f, cen, r, shells, max_refine, floor, joint_tokens)
            done.append((rows, mlp))
            floor = max(floor, float(prompt_constants(rows, mlp, r).max()))
            refined += int(torch.isfinite(spec.spectral).sum())
        return _summarise(done, r, shells, refined)
