"""The aligned attention bounds and the MLP tube perturbation against exact computations.

Each bound is compared with the quantity it bounds, computed directly: autograd Jacobians in
float64, explicit per-source vectors, dense spectral norms, and the best directions found by
alternating maximisation (a lower estimate of the maximum, so `bound >= estimate` can fail).
"""

import pytest
import torch

from blockcert.cert.activations import GELU_CURVATURE, SILU_CURVATURE, SILU_SLOPE, SILU_SLOPE_MIN
from blockcert.cert.lipschitz import block as sound_block
from blockcert.cert.lipschitz import fold_block, forward64, softmax, sound_block_bound
from blockcert.cert.lipschitz import mlp as sound_mlp
from blockcert.cert.lipschitz.attention import attention_rows
from blockcert.cert.lipschitz.attention_aligned import (
    cross_traces,
    key_path_aligned,
    output_spread,
    query_move_aligned,
)
from blockcert.cert.lipschitz.attention_centre import (
    centre_terms,
    centred_query_dir,
    query_combined,
    rope_matrices,
)
from blockcert.cert.lipschitz.attention_joint import value_moves
from blockcert.cert.lipschitz.mlp import mlp_product_pert, weighted_gate_norms
from blockcert.cert.lipschitz.mlp_paired import paired_curvature
from blockcert.cert.lipschitz.norm import normalise
from blockcert.cert.lipschitz.softmax import centred_weights
from blockcert.surrogate.extract import extract_block
from blockcert.surrogate.view import block_view


def _best_aligned_sum(vectors: torch.Tensor, steps: int = 200, seed: int = 0) -> float:
    """Lower estimate of max_(||u|| = 1) sum_i ||vectors_i^T u|| (vectors [n, d, m])."""
    gen = torch.Generator().manual_seed(seed)
    best = 0.0
    for _ in range(4):
        u = torch.randn(vectors.shape[1], generator=gen, dtype=torch.float64)
        u = u / u.norm()
        for _ in range(steps):
            g = torch.einsum("ndm,d->nm", vectors, u)
            best = max(best, float(g.norm(dim=-1).sum()))
            w = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-300)
            u = torch.einsum("ndm,nm->d", vectors, w)
            u = u / u.norm()
    return best


@pytest.fixture
def block(tiny_llama, token_ids):
    x, _ = tiny_llama.block_pair(token_ids, 1)
    view = block_view(extract_block(tiny_llama, 1))
    return view, fold_block(view), x[0].double()


def test_cross_traces_equal_the_traces_they_bound():
    gen = torch.Generator().manual_seed(0)
    n, t, hd = 3, 5, 4
    half = torch.randn(n, t, hd, hd, generator=gen, dtype=torch.float64)
    scat = half @ half.transpose(-1, -2)  # PSD, as the scatter matrices are
    o = torch.randn(n, 7, hd, generator=gen, dtype=torch.float64)  # W_o,h: [d, hd]
    o_cross = torch.einsum("hdi,gdj->hgij", o, o)
    got = cross_traces(o_cross, scat)  # [t, h, g]
    for h in range(n):
        for g in range(n):
            exact = torch.einsum("tij,tji->t", scat[h] @ o_cross[h, g], scat[g] @ o_cross[g, h])
            assert (got[:, h, g] >= exact.sqrt()).all()
            assert (got[:, h, g] <= exact.sqrt() * 1.01 + 1e-2 * got.max()).all()


def test_aligned_key_path_bounds_the_best_direction(block):
    view, f, x = block
    cen = forward64(view, x)
    p, v = cen["p"], cen["v"]
    n, T = p.shape[0], p.shape[-1]
    gen = torch.Generator().manual_seed(1)
    coef = torch.rand(n, T, T, generator=gen, dtype=torch.float64).tril()
    bound = key_path_aligned(f, coef, output_spread(f, v, p, coef))  # [T]
    a = view.attention
    wo = a.o.matrix()
    for t in (0, T // 2, T - 1):
        vecs = []  # coef_hts W_o,h (v_s - vbar_t) as [d, 1] blocks
        for h in range(n):
            w_o = wo[:, h * a.head_dim : (h + 1) * a.head_dim]
            dev = v[h] - p[h, t] @ v[h]  # [s, hd]
            vecs.append((coef[h, t, :, None] * dev) @ w_o.T)
        stacked = torch.cat(vecs)[:, :, None]  # [(h, s), d, 1]
        best = _best_aligned_sum(stacked)
        rowsum = float(stacked.norm(dim=(1, 2)).sum())
        assert float(bound[t]) >= best, (t, float(bound[t]), best)
        assert float(bound[t]) <= 1.5 * rowsum + 1e-4  # never far above the per-source sum


def test_attention_rows_bound_the_exact_row_operator_norm(block):
    """Latt_t >= max_u sum_s ||(d attn_out_t / d x_s)^T u|| of the float64 block, at the centre
    and at random points of the tube; move_t >= how far attn_out_t moved there."""
    _assert_rows_hold_on_the_tube(*block, joint=False, seed=2)


def _attention_output(view):
    return lambda z: forward64(view, z)["y"] - z


def _assert_rows_hold_on_the_tube(view, f, x, joint: bool, seed: int) -> None:
    """Every row's bound (aligned, or joint) of the tube of radius 0.05 median ||x|| is at
    least the row operator norm of the autograd Jacobian at the centre and two random points
    of the tube, and move_t at least how far attn_out_t moved there."""
    r = 0.05 * float(x.norm(dim=-1).median())
    cen = forward64(view, x)
    T = x.shape[0]
    latt, move, _ = attention_rows(f, cen, r, aligned=torch.arange(T), joint=joint)
    gen = torch.Generator().manual_seed(seed)
    attn = _attention_output(view)
    base = attn(x)
    for trial in range(3):
        step = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        point = x if trial == 0 else x + r * step / step.norm(dim=-1, keepdim=True)
        assert float((attn(point) - base).norm(dim=-1).sub(move).max()) <= 0
        jac = torch.autograd.functional.jacobian(attn, point)  # [T, d, T, d]
        for t in (1, T // 2, T - 1):
            blocks = jac[t].permute(1, 0, 2)  # [s, d_out, d_in]
            assert float(latt[t]) >= _best_aligned_sum(blocks)


@pytest.fixture(params=["tiny_llama", "tiny_gpt2"])
def any_block(request, token_ids):
    adapter = request.getfixturevalue(request.param)
    x, _ = adapter.block_pair(token_ids, 1)
    view = block_view(extract_block(adapter, 1))
    return view, fold_block(view), x[0].double()


def test_joint_rows_are_within_a_few_percent_of_the_exact_row_norm_at_the_centre(any_block):
    """At the centre the joint bound (attention_joint) is an upper bound of the row's
    operator norm from the float64 autograd Jacobian, and close to it (the weights follow the
    per-source norms, which makes the Cauchy-Schwarz step nearly tight)."""
    view, f, x = any_block
    cen = forward64(view, x)
    T = x.shape[0]
    rows = torch.tensor([1, T // 2, T - 1])
    latt, _, _ = attention_rows(f, cen, 1e-12, aligned=rows, joint=True)
    aligned, _, _ = attention_rows(f, cen, 1e-12, aligned=rows)
    jac = torch.autograd.functional.jacobian(_attention_output(view), x)  # [T, d, T, d]
    for i, t in enumerate(rows.tolist()):
        best = _best_aligned_sum(jac[t].permute(1, 0, 2))
        assert best <= float(latt[i]) <= 1.1 * best, (t, float(latt[i]), best)
        assert float(latt[i]) < float(aligned[i])


def test_joint_rows_bound_the_exact_row_norm_on_the_tube(any_block):
    """At the centre and random points of the tube the Jacobian rows stay below the joint
    bound, and the attention output moves by at most move_t."""
    _assert_rows_hold_on_the_tube(*any_block, joint=True, seed=3)


def test_weighted_gate_norms_bound_the_exact_spectral_norm(block):
    view, f, x = block
    cen = forward64(view, x)
    up = cen["pre"][1]
    got = weighted_gate_norms(f, up)
    for t in range(0, x.shape[0], 5):
        s = f.down_cols * up[t].abs()
        exact = float(torch.linalg.matrix_norm(s[:, None] * f.mlp_in[0], 2))
        frob = float((s[:, None] * f.mlp_in[0]).norm())
        assert exact <= float(got[t]) <= frob * (1 + 1e-6)


def test_mlp_product_pert_bounds_jacobian_moves(block):
    """||J_M(w') - J_M(w)|| <= pert for normalised inputs w' within rho of w, on directions that
    load single neurons (rows of A_gate, A_up) and random ones."""
    view, f, x = block
    cen = forward64(view, x)
    g_in, u_in = f.mlp_in
    c_g, c_u = f.mlp_const

    def jac(w):
        g, u = w @ g_in.T + c_g, w @ u_in.T + c_u
        sg = torch.sigmoid(g)
        slope = sg * (1 + g * (1 - sg))
        return f.w_down @ (
            (slope * u)[:, None] * g_in + torch.nn.functional.silu(g)[:, None] * u_in
        )

    xhat, _ = normalise(view.mlp_norm, cen["y"])
    gen = torch.Generator().manual_seed(3)
    for radius in (0.03, 0.3, 3.0):
        rho = torch.full((x.shape[0],), radius, dtype=torch.float64)
        pert = mlp_product_pert(f, cen, rho)
        for t in (0, x.shape[0] - 1):
            base = jac(xhat[t])
            loud = torch.argsort(cen["pre"][1][t].abs(), descending=True)[:4]
            dirs = [g_in[i] for i in loud] + [u_in[i] for i in loud]
            dirs += [torch.randn(x.shape[-1], generator=gen, dtype=torch.float64) for _ in "abcd"]
            for d in dirs:
                for sign in (1.0, -1.0):
                    moved = jac(xhat[t] + sign * radius * d / d.norm())
                    change = float(torch.linalg.matrix_norm(moved - base, 2))
                    assert change <= float(pert[t]), (radius, t, change, float(pert[t]))


def test_local_slopes_only_tighten_the_mlp_perturbation(block, monkeypatch):
    """The neuron-wise activation ranges bound what the global constants bound, and far from
    the activation's bend (here: a gate row scaled so that its neurons sit deep in silu's flat
    tail) they are much tighter."""
    view, f, x = block
    cen = forward64(view, x)
    rho = torch.full((x.shape[0],), 0.05, dtype=torch.float64)
    both = mlp_product_pert(f, cen, rho)
    inf = torch.full_like(rho, float("inf"))
    monkeypatch.setattr(sound_mlp, "local_slopes", lambda *a: (inf, inf))
    global_only = mlp_product_pert(f, cen, rho)
    assert (both <= global_only).all()
    monkeypatch.undo()
    deep = dict(cen, pre=(cen["pre"][0] - 40.0, cen["pre"][1]))  # every gate far in the tail
    tail = mlp_product_pert(f, deep, rho)
    monkeypatch.setattr(sound_mlp, "local_slopes", lambda *a: (inf, inf))
    assert (tail <= 1e-3 * mlp_product_pert(f, deep, rho)).all()


def _khatri_rao_ascent(w_down, terms, low: float, high: float) -> float:
    """Largest ||W_d sum_k s_k o c_k o (A_k dw) o (B_k x)|| found over unit dw, x and slopes s_k
    in [low, high] per neuron (terms: (A_k, B_k, c_k)), by alternating maximisation over the
    output direction, the slopes (a vertex of the box), dw and x from 20 random starts."""
    gen = torch.Generator().manual_seed(5)
    unit = lambda v: v / v.norm()  # noqa: E731
    dim = terms[0][0].shape[1]
    best = 0.0
    for _ in range(20):
        dw, x = (unit(torch.randn(dim, generator=gen, dtype=torch.float64)) for _ in "ab")
        y = unit(torch.randn(w_down.shape[0], generator=gen, dtype=torch.float64))
        for _ in range(40):
            back = w_down.T @ y
            slopes = [
                torch.where(back * c * (a @ dw) * (b @ x) > 0, high, low).double()
                for a, b, c in terms
            ]
            scaled = [(s * c, a, b) for s, (a, b, c) in zip(slopes, terms, strict=True)]
            dw = unit(sum(a.T @ (back * w * (b @ x)) for w, a, b in scaled))
            x = unit(sum(b.T @ (back * w * (a @ dw)) for w, a, b in scaled))
            out = w_down @ sum(w * (a @ dw) * (b @ x) for w, a, b in scaled)
            y = unit(out)
            best = max(best, float(out.norm()))
    return best


def test_paired_slope_bounds_the_slope_terms_at_any_slopes(block):
    """||W_d [s_a o (A_u dw) o (A_g x) + s_b o (A_g dw) o (A_u x)]|| <= paired_slope for unit
    dw, x and slopes in silu's range [SILU_SLOPE_MIN, SILU_SLOPE], and the curvature term
    ||W_d (s o u o (A_g dw) o (A_g x))|| <= paired_curvature for |s| <= SILU_CURVATURE and the
    prompt's largest |up|: the best the ascent finds stays below each, and not far below."""
    view, f, x = block
    g_in, u_in = f.mlp_in
    one = torch.ones(g_in.shape[0], dtype=torch.float64)
    terms = [(u_in, g_in, one), (g_in, u_in, one)]
    best = _khatri_rao_ascent(f.w_down, terms, SILU_SLOPE_MIN, SILU_SLOPE)
    assert best <= f.paired_slope <= 10 * best, (f.paired_slope, best)
    up = forward64(view, x)["pre"][1]
    curvature = paired_curvature(f.w_down, f.mlp_in[0], f.gate_gram_abs, up)
    top = up.abs().amax(0)
    best = _khatri_rao_ascent(f.w_down, [(g_in, g_in, top)], -SILU_CURVATURE, SILU_CURVATURE)
    assert best <= curvature <= 10 * best, (curvature, best)


def test_paired_slope_bounds_the_gelu_curvature_term(tiny_gpt2):
    """GELU: ||W_d (s o (A dw) o (A x))|| <= paired_slope for |s| <= GELU_CURVATURE."""
    f = fold_block(block_view(extract_block(tiny_gpt2, 1)))
    (fc,) = f.mlp_in
    one = torch.ones(fc.shape[0], dtype=torch.float64)
    best = _khatri_rao_ascent(f.w_down, [(fc, fc, one)], -GELU_CURVATURE, GELU_CURVATURE)
    assert best <= f.paired_slope <= 10 * best, (f.paired_slope, best)


def test_partly_aligned_rows_still_dominate_the_ascent(tiny_llama, token_ids, monkeypatch):
    """With the aligned bounds on only a few tokens per prompt, the block bound still holds."""
    from tests.unit.test_lipschitz import independent_ascent

    monkeypatch.setattr(sound_block, "ALIGNED_TOKENS", 3)
    x, _ = tiny_llama.block_pair(token_ids, 0)
    surrogate = extract_block(tiny_llama, 0)
    r = 1e-2 * float(x.norm(dim=-1).median())
    few = sound_block_bound(surrogate, [x], r)
    monkeypatch.setattr(sound_block, "ALIGNED_TOKENS", 10_000)
    every = sound_block_bound(surrogate, [x], r)
    assert every.lipschitz <= few.lipschitz * (1 + 1e-8)
    assert every.lipschitz >= independent_ascent(surrogate, x, r, restarts=2, steps=30)


def test_aligned_query_move_bounds_explicit_moves(block):
    """Softmax weights moved by logit shifts |e_ts| <= Delta_ts and value moves y_s - m with
    ||y_s|| <= own_s and a common ||m|| <= mean (random and all aligned to one direction) stay
    within query_move_aligned, per head, with the reweighting through |p' - p| <= moved_p alone
    and with the centred coefficients and the drift on the centre's query term as well, and
    with the value moves split into their own and the mean's parts (never above the first)."""
    view, f, x = block
    cen = forward64(view, x)
    p, k, v = cen["p"], cen["k"], cen["v"]
    a = view.attention
    n, T, hd = p.shape[0], p.shape[-1], a.head_dim
    gen = torch.Generator().manual_seed(4)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    shift = (0.3 * torch.rand(n, T, T, generator=gen, dtype=torch.float64)).masked_fill(~causal, 0)
    log_p = torch.log(p)
    omega = torch.logsumexp(log_p + shift, dim=-1)
    moved_p = torch.where(causal, p * torch.expm1(shift + omega[..., None]), 0.0)
    centred_p = torch.where(causal, centred_weights(log_p, p, shift), 0.0)
    drift = softmax.drift(p, shift, omega) * centre_terms(f, cen)["query_centre"]
    pu = torch.where(causal, torch.exp(log_p + shift + omega[..., None]).clamp_max(1.0), 0.0)
    own = 0.01 * torch.rand(n, T, T, generator=gen, dtype=torch.float64).masked_fill(~causal, 0)
    mean = 0.01 * torch.rand(n, T, generator=gen, dtype=torch.float64)
    e_ts = (own + mean[..., None]).masked_fill(~causal, 0)
    rot = rope_matrices(a.inv_freq, T, hd)
    q_dir = centred_query_dir(f, k, p @ k, rot).masked_fill(~causal, 0)
    mean_shift = torch.minimum((moved_p * q_dir).sum(-1), (centred_p * q_dir).sum(-1))
    split = (own, mean * mean_shift)
    o_moved = output_spread(f, v, p, moved_p)[1]
    centred = (centred_p, output_spread(f, v, p, centred_p)[1], drift)
    alone = (centred_p, o_moved, torch.full_like(drift, torch.inf))
    unsplit = (e_ts, torch.full_like(mean, torch.inf))
    bound = query_move_aligned(f, rot, k, p, moved_p, o_moved, pu, e_ts, centred, split)
    plain = query_move_aligned(f, rot, k, p, moved_p, o_moved, pu, e_ts, alone, unsplit)
    assert (bound <= plain).all() and (bound < 0.95 * plain).any()
    wo, wq = a.o.matrix(), view.attention.q.matrix() * view.attn_norm.weight.double()[None]
    worst = 0.0
    for h in range(n):
        w_o = wo[:, h * hd : (h + 1) * hd]
        a_q = wq[h * hd : (h + 1) * hd]
        for t in (T // 2, T - 1):
            src = slice(0, t + 1)
            b = (k[h, src] - p[h, t, src] @ k[h, src]) @ rot[t] @ a_q  # rows b_s^T [s, d]
            dev = (v[h, src] - p[h, t, src] @ v[h, src]) @ w_o.T  # rows a_s^T [s, d]
            sign = torch.randint(0, 2, (t + 1,), generator=gen).double() * 2 - 1
            moved = torch.softmax(log_p[h, t, src] + sign * shift[h, t, src], dim=-1)
            assert ((moved - p[h, t, src]).abs() <= moved_p[h, t, src] * (1 + 1e-9)).all()
            reweight = dev.T @ ((moved - p[h, t, src])[:, None] * b)
            u = torch.randn(wo.shape[0], generator=gen, dtype=torch.float64)
            m = torch.randn(wo.shape[0], generator=gen, dtype=torch.float64)
            m = m * mean[h, t] / m.norm()
            for ys in (
                torch.randn(t + 1, wo.shape[0], generator=gen, dtype=torch.float64),
                u.expand(t + 1, -1).clone(),
                -m.expand(t + 1, -1).clone(),
            ):
                ys = ys * (own[h, t, src] / ys.norm(dim=-1))[:, None]
                values = (ys - m).T @ (moved[:, None] * b)
                exact = float(torch.linalg.matrix_norm(reweight + values, 2))
                assert exact <= float(bound[h, t]), (h, t, exact, float(bound[h, t]))
                worst = max(worst, exact / float(bound[h, t]))
    assert worst > 0.05  # the bound is not vacuous on these moves


def test_heads_combined_query_centre_bounds_the_exact_sum(block):
    """||sum_h W_o,h Cov_h,t R_t A_q,h|| <= the combined bound <= the per-head sum."""
    view, f, x = block
    cen = forward64(view, x)
    c = centre_terms(f, cen)
    p, k, v = cen["p"], cen["k"], cen["v"]
    a = view.attention
    n, T, hd = p.shape[0], p.shape[-1], a.head_dim
    rows = torch.arange(T)
    combined = query_combined(f, c, cen, rows)
    wo, wq = a.o.matrix(), a.q.matrix() * view.attn_norm.weight.double()[None]
    for t in range(1, T, 3):
        total = 0
        for h in range(n):
            dev_v, dev_k = v[h] - p[h, t] @ v[h], k[h] - p[h, t] @ k[h]
            cov = (p[h, t, :, None] * dev_v).T @ dev_k  # sum_s p (v_s - vbar)(k_s - kbar)^T
            total = (
                total + wo[:, h * hd : (h + 1) * hd] @ cov @ c["rot"][t] @ wq[h * hd : (h + 1) * hd]
            )
        exact = float(torch.linalg.matrix_norm(total, 2))
        assert exact <= float(combined[t]) <= float(c["query_centre"][:, t].sum()) * 1.001 + 1e-9


def test_value_moves_bound_explicit_moves(block):
    """sum_(h, s) coef_hts |u . W_o,h (dv'_s - dv_s)| <= value_moves for explicit tube moves:
    softmax weights moved by shifted logits, and every source's normalised input moved by
    lambda_s r, in random directions and all along one (where the heads' Gram bound has to
    hold for a shared move), at the output directions an alternating ascent finds."""
    view, f, x = block
    cen = forward64(view, x)
    p, v = cen["p"], cen["v"]
    a = view.attention
    n, T, hd = p.shape[0], p.shape[-1], a.head_dim
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    gen = torch.Generator().manual_seed(6)
    logits = torch.log(p.clamp_min(1e-300)) + 0.2 * torch.rand(p.shape, generator=gen)
    p_new = torch.softmax(logits.masked_fill(~causal, -torch.inf), dim=-1)
    av = a.v.matrix() * view.attn_norm.weight.double()[None]
    wo = a.o.matrix()
    w_o = [wo[:, h * hd : (h + 1) * hd] for h in range(n)]
    a_v = [av[g * hd : (g + 1) * hd] for g in a.kv_head_of_q]
    # [H, t]: ||W_o,h sum_s (p' - p)(v_s - vbar_t)|| = ||W_o,h (p' - p) v|| (sum_s (p' - p) = 0)
    reweighted = torch.stack([((p_new[h] - p[h]) @ v[h]) @ w_o[h].T for h in range(n)]).norm(dim=-1)
    lam = torch.rand(T, generator=gen, dtype=torch.float64) + 0.5
    r = 0.1
    coef = torch.rand(n, T, T, generator=gen, dtype=torch.float64).masked_fill(~causal, 0.0)
    bound = value_moves(f, coef, p_new, lam, r, reweighted)  # [t]
    # the mean's reweighting aligned over (h, s) with the centred coefficients of the logit
    # shifts (|e| <= 0.2) instead of the exact per-head norms: a bound as well
    shift = torch.full_like(p, 0.2).masked_fill(~causal, 0.0)
    centred = centred_weights(torch.log(p), p, shift).masked_fill(~causal, 0.0)
    weighted = coef.sum(-1, keepdim=True) * centred
    mean_reweighting = key_path_aligned(f, weighted, output_spread(f, v, p, weighted))
    aligned_bound = value_moves(f, coef, p_new, lam, r, 1e6 * reweighted, mean_reweighting)
    reweighting_only = value_moves(f, coef, p_new, lam, 0.0, 1e6 * reweighted, mean_reweighting)
    assert (aligned_bound < 1e3 * bound).all()  # the aligned term, not the inflated norms
    shared = torch.randn(f.d, generator=gen, dtype=torch.float64)
    for aligned in (False, True, None):  # None: no input moves, the mean's reweighting alone
        du = torch.randn(T, f.d, generator=gen, dtype=torch.float64)
        if aligned:
            du = shared.expand(T, -1).clone()
        du = du / du.norm(dim=-1, keepdim=True) * (lam * r)[:, None]
        if aligned is None:
            du, bound, aligned_bound = 0 * du, reweighting_only, reweighting_only
        for t in (1, T // 2, T - 1):
            w = []  # [(h, s), d]: W_o,h (dv'_s - dv_s)
            for h in range(n):
                v_new = v[h] + du @ a_v[h].T
                dev_new = v_new - p_new[h, t] @ v_new
                dev = v[h] - p[h, t] @ v[h]
                w.append(coef[h, t, :, None] * ((dev_new - dev) @ w_o[h].T))
            w = torch.cat(w)
            u = w.sum(0)
            for _ in range(30):  # u -> sum sign(u . w) w, normalised
                u = (torch.sign(w @ u)[:, None] * w).sum(0)
                u = u / u.norm()
            got = float((w @ u).abs().sum())
            assert 0 < got <= float(bound[t]), (t, aligned, got, float(bound[t]))
            assert got <= float(aligned_bound[t]), (t, aligned, got, float(aligned_bound[t]))


def test_centred_coefficients_represent_the_reweighting_of_centred_sums():
    """For logit moves |e_s| <= Delta_s: sum_s (p'_s - p_s) w_s = sum_s c_s w_s for centred w
    (sum_s p_s w_s = 0) with c_s = e^(-Omega') p_s (e^(e_s) - 1), and |c_s| <= centred_weights,
    which is well below the bound p (e^(Delta + Omega) - 1) on |p' - p| itself for even shifts."""
    gen = torch.Generator().manual_seed(8)
    s = 40
    p = torch.softmax(torch.randn(s, generator=gen, dtype=torch.float64) * 2, dim=-1)
    w = torch.randn(s, 5, generator=gen, dtype=torch.float64)
    w = w - p @ w  # centred under p
    delta = 0.3 * torch.rand(s, generator=gen, dtype=torch.float64)
    bound = centred_weights(torch.log(p), p, delta)
    omega = torch.logsumexp(torch.log(p) + delta, dim=-1)
    moved = p * torch.expm1(delta + omega)  # >= |p' - p|
    for trial in range(50):
        signs = torch.randint(0, 2, (s,), generator=gen).double() * 2 - 1
        e = delta * (signs if trial % 2 else torch.rand(s, generator=gen, dtype=torch.float64))
        p_new = torch.softmax(torch.log(p) + e, dim=-1)
        c = p * torch.expm1(e) / (p * torch.exp(e)).sum()
        assert torch.allclose((p_new - p) @ w, c @ w, atol=1e-12)
        assert (c.abs() <= bound).all()
        assert ((p_new - p).abs() <= moved * (1 + 1e-9)).all()
    assert float(bound.sum()) < 0.7 * float(moved.sum())


def test_drift_bounds_the_reweighting_of_uncentred_sums():
    """For logit moves |e_s| <= Delta_s and any X_s: sum_s (p'_s - p_s) X_s = sum_s c_s X_s +
    (e^(-Omega') - 1) sum_s p_s X_s with |c_s| <= centred_weights and |e^(-Omega') - 1| <=
    softmax.drift; for sources whose p-weighted sum nearly cancels, the norm bound is well below
    sum |p' - p| ||X||."""
    gen = torch.Generator().manual_seed(9)
    s = 40
    p = torch.softmax(torch.randn(s, generator=gen, dtype=torch.float64) * 2, dim=-1)
    x = torch.randn(s, 5, 3, generator=gen, dtype=torch.float64)
    x = x - 0.9 * torch.einsum("s,sij->ij", p, x)  # a sum that mostly cancels
    norms = torch.linalg.matrix_norm(x, 2)
    centre = float(torch.linalg.matrix_norm(torch.einsum("s,sij->ij", p, x), 2))
    delta = 0.3 * torch.rand(s, generator=gen, dtype=torch.float64)
    omega = torch.logsumexp(torch.log(p) + delta, dim=-1)
    coef, drift = centred_weights(torch.log(p), p, delta), float(softmax.drift(p, delta, omega))
    bound = float(coef @ norms) + drift * centre
    moved = p * torch.expm1(delta + omega)  # >= |p' - p|
    worst = 0.0
    for trial in range(200):
        signs = torch.randint(0, 2, (s,), generator=gen).double() * 2 - 1
        e = delta * (signs if trial % 2 else torch.rand(s, generator=gen, dtype=torch.float64))
        p_new = torch.softmax(torch.log(p) + e, dim=-1)
        factor = 1 / (p * torch.exp(e)).sum()  # e^(-Omega')
        assert abs(float(factor) - 1) <= drift
        change = torch.einsum("s,sij->ij", p_new - p, x)
        split = torch.einsum("s,sij->ij", factor * p * torch.expm1(e) + (factor - 1) * p, x)
        assert torch.allclose(change, split, atol=1e-12)
        worst = max(worst, float(torch.linalg.matrix_norm(change, 2)))
    for sign in (1.0, -1.0):
        factor = 1 / (p * torch.exp(sign * delta)).sum()  # the extremes of Omega'
        assert abs(float(factor) - 1) <= drift
    assert worst <= bound
    assert bound < 0.7 * float(moved @ norms), (bound, float(moved @ norms))
