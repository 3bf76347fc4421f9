"""The attention sub-layer on the tube: Latt_t (Jacobian row t's operator norm) and move_t.

The quantity bounded is row t's operator norm for the distance max_t ||.||_2,
max_(||u|| = 1) sum_s ||J_ts^T u|| (at most the row sum sum_s ||J_ts||). With u_s = xhat_s
(gamma folded into A_q, A_k, A_v), lambda_s >= 1/rho_s on the tube and R_t the RoPE rotation,
head h, query t and source s contribute three paths:
  value  p_ts W_o A_v                                           (value_path)
  key    p_ts W_o (v_s - vbar_t) (scale sigma A_k^T R_s^T q_t)^T  rank one (key_path)
  query  (s = t) scale sigma W_o Cov_t R_t A_q                    (query_path)
at the centre's actual p, q, k, v, inflated to the whole tube (the softmax weights:
blockcert.cert.lipschitz.softmax; every norm moves by at most the moved vector's bound times
the other factor's norm). Value and key paths of all heads are combined per source by a Gram
bound; the rows that can decide the max get the aligned bounds (attention_aligned) and, on
request, the joint bound (attention_joint). Derivation: docs/soundness.md#attention-rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from blockcert.cert.lipschitz import attention_joint as joint
from blockcert.cert.lipschitz.attention_aligned import (
    key_path_aligned,
    output_spread,
    query_move_aligned,
)
from blockcert.cert.lipschitz.attention_centre import centre_terms, query_combined, query_rows
from blockcert.cert.lipschitz.folded import FoldedBlock
from blockcert.cert.lipschitz.margins import REL_MARGIN
from blockcert.cert.lipschitz.norm import norm_factor
from blockcert.cert.lipschitz.softmax import TubeSoftmax, drift, tube_softmax

Tensor = torch.Tensor


def attention_rows(
    f: FoldedBlock,
    cen: dict,
    r: float,
    aligned: Tensor | None = None,
    first: tuple[Tensor, Tensor] | None = None,
    joint: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """(Latt_t, move_t, r_y,t) [T]: the attention Jacobian's row norm bounded over the tube of
    radius r, how far attn_out_t moves on it, and the radius of the tube the MLP reads:
    ||y'_t - y_t|| <= r + min(Latt_t r, move_t). aligned: only these rows, with the costlier
    bounds ([len(aligned)] outputs), put into a copy of `first` ([T] each, the same rows of an
    earlier pass) when given, as the smaller of the two; joint: those rows get the joint bound
    (attention_joint) instead of the aligned key and query bounds."""
    eps = f.view.attn_norm.eps
    lam = norm_factor(cen["xnorm"], r, f.d, eps)
    lam_centre = norm_factor(cen["xnorm"], 0.0, f.d, eps) if joint else None
    latt, move = row_bounds(f, cen, lam, r, aligned, lam_centre)
    move = torch.minimum(latt * r, move)
    if first is not None:  # both passes bound the same rows: keep the smaller
        full_latt, full_move = first[0].clone(), first[1].clone()
        full_latt[aligned] = torch.minimum(full_latt[aligned], latt)
        full_move[aligned] = torch.minimum(full_move[aligned], move)
        latt, move = full_latt, full_move
    return latt, move, r + move


@dataclass(frozen=True, eq=False)
class TubeRows:
    """The tube as the bounds of the query rows t see it (one radius)."""

    r: float
    lam: Tensor  # [T] lambda_s on the tube
    lam_t: Tensor  # [t] lambda of the query rows
    dq: Tensor  # [H, t] >= ||q'_t - q_t||
    dk: Tensor  # [H, s] >= ||k'_s - k_s||
    weights: TubeSoftmax  # the softmax weights on the tube


@dataclass(frozen=True, eq=False)
class ValueMoves:
    """How far the centred values w_hts = W_o,h (v_s - vbar_t) move on the tube."""

    own: Tensor  # [H, 1, s] >= ||W_o,h (v'_s - v_s)||
    mean: Tensor  # [H, t] >= ||W_o,h (vbar'_t - vbar_t)||
    total: Tensor  # [H, t, s] e_ts = own + mean (0 off the causal mask)
    upper: Tensor  # [H, t, s] a_ts + e_ts >= ||w'_hts||
    mean_lam: Tensor  # [H, t] >= sum_s p'_ts lambda_s
    reweighted: Tensor  # [H, t] >= ||sum_s (p'_ts - p_ts) w_hts||
    moved_spread: tuple | None  # output_spread of |p' - p| (aligned rows only)
    centred_spread: tuple | None  # output_spread of the centred coefficients (aligned rows)


@dataclass(frozen=True, eq=False)
class QueryMoves:
    """How far the query path ||W_o,h Cov_t R_t A_q,h|| moves on the tube, [H, t] each."""

    moved: Tensor  # its move from the centre's value
    direct: Tensor  # a direct bound of its tube value (no centre term)
    reweight: Tensor  # the reweighting part of the move
    centred: tuple  # (centred coefficients [H, t, s], drift term [H, t]) of the reweighting
    split: tuple  # (own [H, t, s], mean [H, t]) parts of the value moves under it


def row_bounds(
    f: FoldedBlock,
    cen: dict,
    lam: Tensor,
    r: float,
    aligned: Tensor | None = None,
    lam_centre: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(Latt_t, move_t) [t]: Latt_t >= max_(||u|| = 1) sum_s ||(d attn_out_t / d x_s)^T u|| (the
    operator norm of row t from max_s ||dx_s|| to ||.||; at most the row sum of norms) at every
    point of the tube of radius r, and move_t >= ||attn_out(X')_t - attn_out(X)_t|| for every X'
    in it.

    f: the folded block, cen: its float64 centre values, lam [T];
    aligned: None for every query row with the per-source bounds, or the query rows t to bound
    (outputs [len(aligned)]), which also get the costlier Cauchy-Schwarz bounds of
    key_path_aligned (the per-source bounds hold as well; each row takes the smaller).
    lam_centre [T] (the centre's lambda): the aligned rows get the joint bound of
    attention_joint (value, key and query paths of all sources together) and the aligned
    moves, but not the aligned key and combined query bounds (the caller takes the smaller of
    this and an earlier pass's bounds).
    """
    c = centre_terms(f, cen)
    if aligned is not None:
        c = query_rows(c, aligned)
    has_rows = aligned is not None and len(aligned) > 0
    joint_pass = has_rows and lam_centre is not None
    tube = _tube_rows(f, c, lam, r, aligned)
    dev = _value_moves(f, c, cen["v"], tube, has_rows)
    value, value_sum, values_move = _value_path(f, tube, dev)
    beta, key_sum = _key_path(f, c, tube, dev)
    # value and key paths: per source with the heads combined by their Gram bound, or the
    # triangle sum over heads and sources, whichever is smaller
    gram = _value_key_gram(f, c, tube.weights.upper, beta, c["a_ts"], dev.total)
    value_key = torch.minimum(value_sum + key_sum, (gram.sqrt() * lam[None, :]).sum(-1))
    if has_rows and not joint_pass:  # the joint pass's caller keeps these from an earlier pass
        aligned_key = _value_key_aligned(f, cen, c, tube, dev, beta, value)
        value_key = torch.minimum(value_key, aligned_key)
    q = _query_path(f, c, tube, dev)
    move, q_moved = dev.mean.sum(0), q.moved
    if has_rows:
        aligned_move, q_moved, keys_moved = _aligned_moves(f, cen, c, tube, dev, q, values_move)
        move = torch.minimum(move, aligned_move)
    query = torch.minimum(c["query_centre"] + q_moved, q.direct).sum(0)  # [t]
    if has_rows and not joint_pass:
        # heads combined at the centre: ||sum_h Q'_h|| <= ||sum_h Q_h|| + sum_h ||Q'_h - Q_h||
        combined = query_combined(f, centre_terms(f, cen), cen, aligned) + q_moved.sum(0)
        query = torch.minimum(query, combined)
    # the query path reads source t only: scale sigma lambda_t ||sum_h W_o,h Cov'_t R_t A_q,h||
    rows_bound = value_key + abs(f.view.attention.scale) * f.sigma * tube.lam_t * query
    if joint_pass:
        joint_bound = _joint_rows(f, cen, c, aligned, lam_centre, tube, dev, q, q_moved, keys_moved)
        rows_bound = torch.minimum(rows_bound, joint_bound)
    return rows_bound * (1 + REL_MARGIN), move * (1 + REL_MARGIN)


def _tube_rows(f: FoldedBlock, c: dict, lam: Tensor, r: float, aligned: Tensor | None) -> TubeRows:
    """The moves of q and k on the tube and the softmax weights they allow."""
    scale, sigma = abs(f.view.attention.scale), f.sigma
    lam_t = lam if aligned is None else lam[aligned]
    dq = sigma * f.c_q[:, None] * lam_t[None, :] * r  # [H, t] ||q'_t - q_t||
    dk = sigma * f.c_k[:, None] * lam[None, :] * r  # [H, s] ||k'_s - k_s||
    # |z'_ts - z_ts| <= scale sigma (||A_q^T R_t^T (k_s - kbar_t)|| lambda_t r
    #                   + ||A_k^T R_s^T q_t|| lambda_s r) + scale dq_t dk_s
    query_dir, key_dir = c["query_dir"], c["key_dir"]
    shift = scale * sigma * r * (query_dir * lam_t[None, :, None] + key_dir * lam[None, None, :])
    shift = shift + scale * dq[:, :, None] * dk[:, None, :]
    return TubeRows(r, lam, lam_t, dq, dk, tube_softmax(c["p"], shift, c["causal"]))


def _value_moves(f: FoldedBlock, c: dict, v: Tensor, tube: TubeRows, aligned: bool) -> ValueMoves:
    """How far W_o,h (v_s - vbar_t) moves on the tube: each source's own value move and the
    mean's (its values' move and its reweighting, the latter also by Cauchy-Schwarz on the
    aligned rows)."""
    sm, lam, r = tube.weights, tube.lam, tube.r
    p, a_ts = c["p"], c["a_ts"]
    lam_s = lam[None, None, :]
    ev_s = f.c_ov[:, None, None] * lam_s * r
    mean_lam = torch.minimum((sm.upper * lam_s).sum(-1), lam.max().expand_as(sm.delta))
    reweighted = torch.minimum(sm.l1 * a_ts.amax(-1), (sm.moved * a_ts).sum(-1))
    centred_sum = (sm.centred * a_ts).sum(-1).masked_fill(~sm.centred_ok, torch.inf)
    reweighted = torch.minimum(reweighted, centred_sum)
    moved_spread = centred_spread = None
    if aligned:  # ||sum_s c_s w_s|| <= sqrt(sum_s c_s) sqrt(lambda_max(sum_s c_s w_s w_s^T))
        moved_spread = output_spread(f, v, p, sm.moved)
        centred_spread = output_spread(f, v, p, sm.centred)
        moved_sum = (sm.moved.sum(-1) * moved_spread[1]).sqrt() * (1 + REL_MARGIN)
        centred_sum = (sm.centred.sum(-1) * centred_spread[1]).sqrt() * (1 + REL_MARGIN)
        centred_sum = centred_sum.masked_fill(~sm.centred_ok, torch.inf)
        reweighted = torch.minimum(reweighted, torch.minimum(moved_sum, centred_sum))
    ev_bar = f.c_ov[:, None] * r * mean_lam + reweighted
    e_ts = (ev_s + ev_bar[..., None]).masked_fill(~c["causal"], 0.0)
    return ValueMoves(
        own=ev_s,
        mean=ev_bar,
        total=e_ts,
        upper=a_ts + e_ts,
        mean_lam=mean_lam,
        reweighted=reweighted,
        moved_spread=moved_spread,
        centred_spread=centred_spread,
    )


def _value_path(f: FoldedBlock, tube: TubeRows, dev: ValueMoves) -> tuple[Tensor, Tensor, Tensor]:
    """(per source [t, s], row [t], move [t]) of the value path sum_h p'_hts W_o,h A_v,h: per
    source ||sum_h p'_h B_h|| <= sqrt(p'^T N p') (N_hg >= ||B_h^T B_g||), over the row the
    triangle sum sum_h ||B_h|| sum_s p'_hs lambda_s, and how far the values move the output
    (r times the smaller of the two sums)."""
    pu, lam = tube.weights.upper, tube.lam
    value = (torch.einsum("hts,hg,gts->ts", pu, f.ov_gram, pu) * (1 + REL_MARGIN)).sqrt()
    row = (f.c_ov[:, None] * dev.mean_lam).sum(0)
    move = torch.minimum(row, (value * lam[None, :]).sum(-1)) * tube.r
    return value, row, move


def _key_path(f: FoldedBlock, c: dict, tube: TubeRows, dev: ValueMoves) -> tuple[Tensor, Tensor]:
    """(beta [H, t, s], row [t]) of the key path's rank-one terms p'_ts w'_ts kappa'_ts^T:
    beta >= p'_ts ||kappa'_ts|| (kappa = scale sigma A_k^T R_s^T q_t, which moves by at most
    scale sigma ||A_k|| dq_t) and the triangle sum sum_(h, s) beta ||w'|| lambda_s."""
    scale, sigma = abs(f.view.attention.scale), f.sigma
    pu = tube.weights.upper
    beta = pu * scale * sigma * (c["key_dir"] + f.c_k[:, None, None] * tube.dq[:, :, None])
    row = (beta * dev.upper * tube.lam[None, None, :]).sum(-1).sum(0)
    return beta, row


def _value_key_aligned(
    f: FoldedBlock, cen: dict, c: dict, tube: TubeRows, dev: ValueMoves, beta, value
) -> Tensor:
    """[t] value and key paths bounded apart: ||J_ts^T u|| <= ||sum_h p'_hts B_h|| lambda_s +
    sum_h coef_hts |u . W_o,h (v'_s - vbar'_t)|, the key terms aligned over (h, s)."""
    coef = beta * tube.lam[None, None, :]  # [H, t, s] >= p'_ts ||kappa'_ts|| lambda_s
    key = key_path_aligned(f, coef, output_spread(f, cen["v"], c["p"], coef))
    key = key + (coef * dev.total).sum((0, -1))
    return (value * tube.lam[None, :]).sum(-1) + key


def _query_path(f: FoldedBlock, c: dict, tube: TubeRows, dev: ValueMoves) -> QueryMoves:
    """QueryMoves per head: ||Q'_h|| <= min(||Q_h|| + ||Q'_h - Q_h||, direct)."""
    sm = tube.weights
    query_dir, a_ts = c["query_dir"], c["a_ts"]
    # the query path's reweighting sum_s (p' - p)_s X_s is not centred (sum_s p_s X_s = Q_h, the
    # query path itself): drift
    drift_term = drift(sm.p, sm.shift, sm.omega) * c["query_centre"]
    centred = (sm.centred, drift_term.masked_fill(~sm.centred_ok, torch.inf))
    # the value moves under it split into each source's own, W_o (v'_s - v_s) (<= ev_s), and
    # the mean's, W_o (vbar'_t - vbar_t) (<= ev_bar), common to all sources: sum_s p'_s b_s =
    # sum_s (p'_s - p_s) b_s (b_s = A_q^T R_t^T (k_s - kbar_t) sums to zero under p), so the
    # mean's part is at most ev_bar times that centred sum's norm
    mean_shift = torch.minimum(sm.l1 * query_dir.amax(-1), (sm.moved * query_dir).sum(-1)).minimum(
        (sm.centred * query_dir).sum(-1).masked_fill(~sm.centred_ok, torch.inf)
    )
    split = (dev.own.expand_as(a_ts).masked_fill(~c["causal"], 0.0), dev.mean * mean_shift)
    moved, direct, reweight = _query_moves(
        f, query_dir, sm.upper, sm.moved, sm.delta, a_ts, dev.upper, tube.dk, centred, split
    )
    return QueryMoves(moved, direct, reweight, centred, split)


def _aligned_moves(
    f: FoldedBlock,
    cen: dict,
    c: dict,
    tube: TubeRows,
    dev: ValueMoves,
    q: QueryMoves,
    values_move: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """(move [t], query move [H, t], key moves under the query path [H, t]) on the aligned rows.

    The output moves by sum_h W_o,h [sum_s p'_ts (v'_s - v_s) + sum_s (p'_ts - p_ts)
    (v_s - vbar_t)]: values, then the reweighting aligned like the key path; the query path's
    move by Cauchy-Schwarz on its rank-one sums (query_move_aligned)."""
    sm = tube.weights
    centred_move = key_path_aligned(f, sm.centred, dev.centred_spread)
    centred_move = centred_move.where(sm.centred_ok.all(0), torch.inf)
    reweight = torch.minimum(key_path_aligned(f, sm.moved, dev.moved_spread), centred_move)
    k_move = f.c_q[:, None, None] * tube.dk[:, None, :]
    keys_moved = (sm.upper * dev.upper * k_move).sum(-1)
    centred_aligned = (sm.centred, dev.centred_spread[1], q.centred[1])
    q_aligned = query_move_aligned(
        f,
        c["rot"],
        cen["k"],
        sm.p,
        sm.moved,
        dev.moved_spread[1],
        sm.upper,
        dev.total,
        centred_aligned,
        q.split,
    )
    return values_move + reweight, torch.minimum(q.moved, q_aligned + keys_moved), keys_moved


def _joint_rows(
    f: FoldedBlock,
    cen: dict,
    c: dict,
    aligned: Tensor,
    lam_centre: Tensor,
    tube: TubeRows,
    dev: ValueMoves,
    q: QueryMoves,
    q_moved: Tensor,
    keys_moved: Tensor,
) -> Tensor:
    """[t] the joint bound of the aligned rows (attention_joint) at the centre, grown to the
    tube by max_s lambda'_s / lambda_s plus the per-source moves (attention_joint.tube_sources)."""
    scale, sigma = abs(f.view.attention.scale), f.sigma
    sm, lam, r = tube.weights, tube.lam, tube.r
    p, v, a_ts = c["p"], cen["v"], c["a_ts"]
    lam_s = lam[None, None, :]
    full = centre_terms(f, cen)
    weights = joint.source_weights(f, c, aligned, lam_centre)
    centre = joint.centre_rows(f, cen, full["rot"], aligned, weights, lam_centre)
    key_up = scale * sigma * (c["key_dir"] + f.c_k[:, None, None] * tube.dq[:, :, None])
    # the reweighted key terms at the centre's deviations, aligned over (h, s) like the key
    # path: sum moved_p key_up lambda_s |u . W_o,h (v_s - vbar_t)|
    coef = sm.moved * key_up * lam_s
    reweighted_keys = torch.minimum(
        (coef * a_ts).sum((0, -1)), key_path_aligned(f, coef, output_spread(f, v, p, coef))
    )
    # the query path's move with its heads combined like the key path's value moves:
    # ||sum_h (Q'_h - Q_h)|| <= reweighting + value moves (coef p' ||A_q^T R^T (k_s - kbar)||)
    # + key moves, against the per-head sum
    q_side = sm.upper * c["query_dir"]
    q_heads = q.reweight.sum(0) + joint.value_moves(f, q_side, sm.upper, lam, r, dev.reweighted)
    q_heads = q_heads + keys_moved.sum(0)
    query_move = torch.minimum(q_moved.sum(0), q_heads)
    # the mean's reweighting under the key terms, sum_h C_h |u . W_o,h sum_s (p' - p)_hs
    # (v_s - vbar_t)| with C_h the key coefficients' total (tube_sources), aligned over
    # (h, s) with the centred coefficients C_h centred_p_hs
    key_total = ((p + sm.moved) * key_up * lam_s).sum(-1, keepdim=True)  # [H, t, 1]
    coef = key_total * sm.centred
    mean_reweighting = key_path_aligned(f, coef, output_spread(f, v, p, coef))
    mean_reweighting = mean_reweighting.where(sm.centred_ok.all(0), torch.inf)
    moves = joint.tube_sources(
        f,
        aligned,
        p,
        sm.moved,
        sm.upper,
        a_ts,
        key_up,
        tube.dq,
        query_move,
        lam,
        r,
        dev.reweighted,
        reweighted_keys,
        mean_reweighting,
    )
    # lambda grows on the tube: sum_s lambda'_s ||J_ts^T u|| <= max_s (lambda'_s / lambda_s)
    # times the centre's sum
    grow = (lam / lam_centre).max() * (1 + REL_MARGIN)
    return grow * centre + moves


def _value_key_gram(f: FoldedBlock, c: dict, pu, beta, a_ts, e_ts) -> Tensor:
    """[t, s] >= ||sum_h (value_h + key_h)||^2 on the tube, heads combined per source.

    Components X_h = p'_h W_o,h A_v,h (value) and Y_h = beta_h w'_h u_h^T (key, w_h =
    W_o,h (v_s - vbar_t), ||u_h|| = 1 after beta): ||sum X + sum Y||^2 = ||sum_ij Z_i^T Z_j||
    <= sum_ij ||Z_i^T Z_j||, with ||X_h^T X_g|| <= p'_h p'_g N_hg, ||X_h^T Y_g|| <= p'_h beta_g
    ||B_h^T w'_g|| and ||Y_h^T Y_g|| <= beta_h beta_g |w'_h . w'_g|. Tube: ||w'_h - w_h|| <= e_h.
    """
    total = torch.einsum("hts,hg,gts->ts", pu, f.ov_gram, pu)
    for h, (dot, cross) in enumerate(zip(c["gram_dot"], c["gram_cross"], strict=True)):
        dot = dot + e_ts[h][None] * a_ts + a_ts[h][None] * e_ts + e_ts[h][None] * e_ts
        cross = cross + f.c_ov[h] * e_ts
        total = total + beta[h] * (beta * dot).sum(0) + 2 * pu[h] * (beta * cross).sum(0)
    return total * (1 + REL_MARGIN)


def _query_moves(
    f: FoldedBlock, q_side, pu, moved_p, delta, a_ts, a_up, dk, centred: tuple, split: tuple
) -> tuple[Tensor, Tensor, Tensor]:
    """([H, T] each): how far ||W_o,h Cov_t R_t A_q,h|| can move on the tube, a direct bound of
    its tube value (per source, no centre term), and the reweighting part of the move; centred:
    (coefficients, drift term) with sum_s coef_s ||X_s|| + drift >= the reweighting's norm;
    split: (own [H, t, s], mean [H, t]) >= the value moves' own parts ||W_o (v'_s - v_s)|| and
    the norm of the mean's part sum_s p'_s W_o (vbar'_t - vbar_t) b_s^T.

    Cov'_t = sum_s p'_ts (v'_s - vbar'_t)(k'_s - kbar_t)^T for the CENTRE mean kbar_t (the
    weights (v' - vbar') sum to zero under p'), so every source contributes a rank-one term
    whose A_q side is ||A_q^T R_t^T (k_s - kbar_t)|| (+ ||A_q|| ||k'_s - k_s||).
    """
    aq = a_ts * q_side
    reweight = torch.minimum(delta.clamp_max(2.0) * aq.amax(-1), (moved_p * aq).sum(-1))
    reweight = torch.minimum(reweight, (centred[0] * aq).sum(-1) + centred[1])
    e_ts = a_up - a_ts
    k_move = f.c_q[:, None, None] * dk[:, None, :]
    values = torch.minimum(
        (pu * e_ts * q_side).sum(-1), (pu * split[0] * q_side).sum(-1) + split[1]
    )
    moved = reweight + values + (pu * a_up * k_move).sum(-1)
    direct = (pu * a_up * (q_side + k_move)).sum(-1)
    return moved, direct, reweight
