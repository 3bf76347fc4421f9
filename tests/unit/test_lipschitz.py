"""Sound Lipschitz / saturation constants against independent lower estimates, and the chain.

The independent ascent below is written here, not imported from production code: projected
gradient ascent on d(g(X+D), g(X)) / d(D) with 5 restarts x 50 steps and its own seed.
"""

import dataclasses
import json
import math
import re
from fractions import Fraction
from pathlib import Path

import pytest
import torch

import blockcert.cert.spectral as spectral
from blockcert.cert.activations import (
    GELU_ARGMIN,
    GELU_CURVATURE,
    GELU_MIN,
    GELU_SLOPE,
    SILU_ARGMIN,
    SILU_CURVATURE,
    SILU_MIN,
    SILU_SLOPE,
    silu_curvature_range,
    silu_slope_range,
)
from blockcert.cert.fp_allowance import fp_error
from blockcert.cert.lipschitz import (
    FLOAT64_BELOW,
    SATURATED,
    LipschitzOptions,
    empirical_ascent,
    empirical_lipschitz,
    fold_block,
    forward64,
    search_dtype,
    sound_block_bound,
    sound_lipschitz,
)
from blockcert.cert.lipschitz import mlp as lipschitz_mlp
from blockcert.cert.lipschitz.mlp import mlp_centre_lower, mlp_state, slope_reaches
from blockcert.cert.lipschitz.shells import shell_mean, shell_radii
from blockcert.cert.spectral import (
    spectral_norm_certified_batched,
    spectral_norm_upper_batched,
    top_eigenvalue_certified_batched,
)
from blockcert.compose.bound import bound_trajectory, step_bound
from blockcert.compose.chain import compose_chain
from blockcert.compose.grid import grid_trajectory
from blockcert.compose.rational import round_up
from blockcert.surrogate.capacity import Capacity, reduce
from blockcert.surrogate.extract import extract_block
from blockcert.surrogate.interpret import run_graph
from blockcert.surrogate.view import block_view

LEAN = Path(__file__).resolve().parents[2] / "lean"
RADIUS_FRACTIONS = [1e-4, 1e-2, 1e-1]


def independent_ascent(surrogate, x, radius, restarts=5, steps=50, seed=1234) -> float:
    """Largest d(g(X+D), g(X)) / d(D) found with d(D) <= radius (a lower bound on Lip)."""
    graph, weights = surrogate.graph, {k: v.float() for k, v in surrogate.weights.items()}
    x = x.float()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        base = run_graph(graph, weights, x)

    def ratio(delta):
        num = (run_graph(graph, weights, x + delta) - base).norm(dim=-1).amax(-1)
        return num / delta.norm(dim=-1).amax(-1)

    def clip(delta):
        norms = delta.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        return delta * torch.clamp(radius / norms, max=1.0)

    best = 0.0
    for _ in range(restarts):
        delta = clip(torch.randn(x.shape, generator=gen) * radius)
        delta = delta * (radius / delta.norm(dim=-1, keepdim=True).clamp_min(1e-30))
        for _ in range(steps):
            delta.requires_grad_(True)
            value = ratio(delta)
            best = max(best, float(value.max()))
            (grad,) = torch.autograd.grad(value.sum(), delta)
            with torch.no_grad():
                step = grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-30)
                delta = clip(delta + 0.3 * radius * step)
        with torch.no_grad():
            best = max(best, float(ratio(delta).max()))
    return best


def _inputs(adapter, token_ids, k):
    x, _ = adapter.block_pair(token_ids, k)
    return x


def test_activation_constants_hold_on_a_dense_grid():
    a = torch.linspace(-30, 30, 600001, dtype=torch.float64)
    a.requires_grad_(True)
    for fn, slope, curv, fmin, argmin in [
        (torch.nn.functional.silu, SILU_SLOPE, SILU_CURVATURE, SILU_MIN, SILU_ARGMIN),
        (
            lambda t: torch.nn.functional.gelu(t, approximate="tanh"),
            GELU_SLOPE,
            GELU_CURVATURE,
            GELU_MIN,
            GELU_ARGMIN,
        ),
    ]:
        y = fn(a)
        (d1,) = torch.autograd.grad(y.sum(), a, create_graph=True)
        (d2,) = torch.autograd.grad(d1.sum(), a)
        assert float(d1.detach().abs().max()) < slope and float(d2.abs().max()) < curv
        assert float(y.min()) > fmin and abs(float(a[y.argmin()]) - argmin) < 1e-3


def test_local_silu_ranges_bound_the_activation_on_every_interval():
    """_silu_slope_range and _silu_curvature_range against |silu'|, |silu''| (autograd) on a
    dense grid inside 3000 random intervals: never below, and tight."""
    gen = torch.Generator().manual_seed(0)
    lo = torch.rand(3000, generator=gen, dtype=torch.float64) * 60 - 30
    width = 10 ** (torch.rand(3000, generator=gen, dtype=torch.float64) * 6 - 4)
    hi = lo + width
    lo[:20], hi[:20] = -lo[:20].abs(), lo[:20].abs()  # some straddle 0
    pts = lo[:, None] + (hi - lo)[:, None] * torch.linspace(0, 1, 2001, dtype=torch.float64)
    pts.requires_grad_(True)
    (d1,) = torch.autograd.grad(torch.nn.functional.silu(pts).sum(), pts, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), pts)
    for got, exact in (
        (silu_slope_range(lo, hi), d1.detach().abs().amax(1)),
        (silu_curvature_range(lo, hi), d2.abs().amax(1)),
    ):
        assert (got >= exact).all()
        assert (got <= exact * (1 + 1e-3) + 1e-6).all()  # extrema: rounded constants, grid


def test_batched_spectral_upper_bound_is_sound():
    mats = torch.randn(20, 40, 17, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = torch.linalg.matrix_norm(mats, 2)
    upper = spectral_norm_upper_batched(mats)
    assert (upper >= exact).all() and (upper <= 1.2 * exact).all()


def _with_spectrum(values: torch.Tensor, rows: int, seed: int) -> torch.Tensor:
    """Matrices [n, rows, k] with the given singular values [n, k] (random orthogonal factors)."""
    gen = torch.Generator().manual_seed(seed)
    n, k = values.shape
    left, _ = torch.linalg.qr(torch.randn(n, rows, k, generator=gen, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(n, k, k, generator=gen, dtype=torch.float64))
    return left @ torch.diag_embed(values) @ right.transpose(-1, -2)


def test_certified_spectral_norm_is_an_upper_bound_within_1e_3():
    gen = torch.Generator().manual_seed(1)
    flat = torch.rand(6, 48, generator=gen, dtype=torch.float64) + 0.5  # no gap at the top
    tied = torch.cat([torch.full((6, 3), 2.0, dtype=torch.float64), flat[:, 3:]], dim=1)
    decaying = 10.0 ** -torch.linspace(0, 6, 48, dtype=torch.float64).expand(6, 48)
    low_rank = torch.cat([flat[:, :5], torch.zeros(6, 43, dtype=torch.float64)], dim=1)
    for seed, values in enumerate((flat, tied, decaying, low_rank)):
        mats = _with_spectrum(values, 60, seed)
        exact = torch.linalg.matrix_norm(mats, 2)
        for m in (mats, mats.transpose(-1, -2)):
            upper = spectral_norm_certified_batched(m)
            assert (upper >= exact).all() and (upper <= exact * (1 + 1e-3)).all()
    assert float(spectral_norm_certified_batched(torch.zeros(2, 5, 5)).max()) == 0.0


def test_certified_top_eigenvalue_is_an_upper_bound_within_3e_2():
    gen = torch.Generator().manual_seed(2)
    flat = torch.rand(6, 48, generator=gen, dtype=torch.float64) + 0.5
    decaying = 10.0 ** -torch.linspace(0, 6, 48, dtype=torch.float64).expand(6, 48)
    low_rank = torch.cat([flat[:, :5], torch.zeros(6, 43, dtype=torch.float64)], dim=1)
    for seed, values in enumerate((flat, decaying, low_rank)):
        half = _with_spectrum(values, 48, seed)
        sym = half @ half.transpose(-1, -2)  # PSD with eigenvalues values^2
        sym = 0.5 * (sym + sym.transpose(-1, -2))
        exact = torch.linalg.eigvalsh(sym)[..., -1]
        upper = top_eigenvalue_certified_batched(sym)
        assert (upper >= exact).all() and (upper <= exact * (1 + 3e-2)).all()
    assert float(top_eigenvalue_certified_batched(torch.zeros(2, 5, 5)).max()) == 0.0


def test_certified_spectral_norm_holds_when_its_estimate_is_far_too_low(monkeypatch):
    """The Cholesky test, not the estimate, makes the bound: an estimate of half (or zero) of
    lambda_max fails the factorisation, the margins grow, and the Schatten fallback takes what
    is left, so the result still bounds the exact norm."""
    mats = _with_spectrum(torch.rand(4, 30, dtype=torch.float64) + 1.0, 40, 7)
    exact = torch.linalg.matrix_norm(mats, 2)
    real = spectral.top_eigenvalue_estimate
    for factor in (0.5, 0.0):
        monkeypatch.setattr(spectral, "top_eigenvalue_estimate", lambda g, f=factor: f * real(g))
        upper = spectral_norm_certified_batched(mats)
        assert (upper >= exact).all()
        assert (upper <= 1.2 * exact).all()  # Schatten-64 at worst


def test_saturated_chain_step_skips_the_passes_without_changing_it(tiny_adapter, token_ids):
    """Where B is far above the token norms a centre forward alone shows min(L B, B + a) =
    B + a: L is not computed (saturated_step) and the chain's step equals the full
    computation's; at a small B every pass runs, unchanged."""
    x = _inputs(tiny_adapter, token_ids, 1)
    surrogate = extract_block(tiny_adapter, 1)
    typical = float(x.norm(dim=-1).median())
    for bound, skipped in ((1e4 * typical, True), (1e-3 * typical, False)):
        full = sound_block_bound(surrogate, [x], bound)
        quick = sound_block_bound(surrogate, [x], bound, saturates_from=bound)
        assert quick.saturated_step is skipped and not full.saturated_step
        step_full = step_bound(
            Fraction(bound), Fraction(0), round_up(full.lipschitz), round_up(full.saturation)
        )
        lip_quick = None if skipped else round_up(quick.lipschitz)
        step_quick = step_bound(Fraction(bound), Fraction(0), lip_quick, round_up(quick.saturation))
        assert quick.saturation >= full.saturation * (1 - 1e-12)
        assert abs(float(step_quick / step_full) - 1) <= 1e-9, (step_quick, step_full)
        if skipped:
            assert math.isinf(quick.lipschitz) and quick.attention is None
        else:
            assert quick.lipschitz == full.lipschitz


def test_saturated_step_is_reported_without_a_constant(tiny_llama, token_ids):
    x = _inputs(tiny_llama, token_ids, 1)
    bound = 1e4 * float(x.norm(dim=-1).median())
    lip = sound_lipschitz(extract_block(tiny_llama, 1), [x], bound, saturates_from=bound)
    assert lip.value is None and lip.parts["saturated_step"]
    assert lip.parts["reason"] == SATURATED and lip.parts["saturation"] > 0
    json.dumps(lip.to_dict(), allow_nan=False)  # strict JSON: no inf or nan in the parts


def test_mlp_centre_lower_is_below_the_exact_spectral_norm(tiny_adapter, token_ids):
    view = block_view(extract_block(tiny_adapter, 1))
    f = fold_block(view)
    cen = forward64(view, _inputs(tiny_adapter, token_ids, 1)[0])
    z, _, _ = mlp_state(f, cen, torch.zeros(cen["y"].shape[0], dtype=torch.float64))
    m = f.w_down.shape[1]
    exact = torch.stack(
        [
            torch.linalg.matrix_norm(
                f.w_down @ sum(zt[j * m : (j + 1) * m, None] * a for j, a in enumerate(f.mlp_in)),
                2,
            )
            for zt in z
        ]
    )
    low = mlp_centre_lower(f, z)
    assert (low <= exact).all() and (low >= 0.5 * exact).all()


def test_slope_search_stops_at_the_first_token_that_reaches(tiny_adapter, token_ids, monkeypatch):
    """slope_reaches answers max_t 1 + lambda2_t low_t >= needed as the lower bounds of every
    token at once do, trying tokens batch by batch and stopping once one reaches."""
    view = block_view(extract_block(tiny_adapter, 1))
    f = fold_block(view)
    x = _inputs(tiny_adapter, token_ids, 1)
    cens = [forward64(view, xi) for xi in x]
    z = torch.cat([mlp_state(f, c, torch.zeros_like(c["ynorm"]))[0] for c in cens])
    lam2 = torch.rand(len(z), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert len(z) > 2 * lipschitz_mlp.REFINE_BATCH  # more than one batch to try
    exact = torch.stack([_mlp_exact(f, zt) for zt in z])
    top = float((1 + lam2 * exact).max())
    calls, lower = [], lipschitz_mlp.mlp_centre_lower
    monkeypatch.setattr(
        lipschitz_mlp, "mlp_centre_lower", lambda f, z: calls.append(len(z)) or lower(f, z)
    )
    assert not slope_reaches(f, z, lam2, top * (1 + 1e-9))  # above the exact max: never
    assert sum(calls) == len(z)  # ... after every token was tried
    calls.clear()
    assert slope_reaches(f, z, lam2, 1.0)  # every token reaches 1: the first batch settles it
    assert calls == [lipschitz_mlp.REFINE_BATCH]
    calls.clear()
    assert slope_reaches(f, z, lam2, 1 + 0.5 * (top - 1))  # within the lower bound's 2x


def _mlp_exact(f, zt):
    m = f.w_down.shape[1]
    jac = f.w_down @ sum(zt[j * m : (j + 1) * m, None] * a for j, a in enumerate(f.mlp_in))
    return torch.linalg.matrix_norm(jac, 2)


def test_float64_forward_matches_the_interpreter(tiny_adapter, token_ids):
    x = _inputs(tiny_adapter, token_ids, 1)
    surrogate = extract_block(tiny_adapter, 1)
    view = block_view(surrogate)
    out32 = run_graph(surrogate.graph, surrogate.weights, x)
    for i in range(len(x)):
        out64 = forward64(view, x[i])["out"]
        scale = float(out64.norm(dim=-1).max())
        assert float((out64 - out32[i].double()).norm(dim=-1).max()) < 1e-5 * scale
    error = fp_error(surrogate, [x])
    assert 0 < error < 1e-5 * float(x.norm(dim=-1).max()) + 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [1e-2])
def test_sound_dominates_independent_ascent_on_one_block(tiny_adapter, token_ids, fraction):
    x = _inputs(tiny_adapter, token_ids, 0)[:2, :12]
    surrogate = extract_block(tiny_adapter, 0)
    radius = fraction * float(x.norm(dim=-1).median())
    sound = sound_lipschitz(surrogate, [x], radius)
    assert sound.kind == "sound" and sound.value is not None and math.isfinite(sound.value)
    assert sound.value >= independent_ascent(surrogate, x, radius)


@pytest.mark.slow
@pytest.mark.parametrize("fraction", RADIUS_FRACTIONS)
def test_sound_dominates_independent_ascent_every_block(tiny_adapter, token_ids, fraction):
    """The whole-tube bound and the shell-averaged one (tube cut into 4 shells) both hold, and
    so does the bound with the spectral MLP norm on one token per prompt only (the others keep
    the Frobenius screen), and the one with the joint attention bound on every row."""
    for k in range(tiny_adapter.num_blocks):
        x = _inputs(tiny_adapter, token_ids, k)
        surrogate = extract_block(tiny_adapter, k)
        radius = fraction * float(x.norm(dim=-1).median())
        sound = sound_lipschitz(surrogate, [x], radius)
        shells = sound_lipschitz(surrogate, [x], radius, shells=4)
        capped = sound_lipschitz(surrogate, [x], radius, refine_tokens=1)
        joint = sound_lipschitz(surrogate, [x], radius, joint_tokens=None)
        observed = independent_ascent(surrogate, x, radius)
        assert sound.value is not None and sound.value >= observed, (k, sound.value, observed)
        assert observed <= joint.value <= sound.value, (k, joint.value, observed)
        assert observed <= shells.value <= sound.value, (k, shells.value, observed)
        assert shells.parts["shells"] == 4 and sound.parts["shells"] == 1
        assert capped.value >= observed and capped.parts["refined"] <= len(x)


def test_saturation_bounds_moves_within_its_tube(tiny_adapter, token_ids):
    """d(g(y), g(x)) <= d(y, x) + a(R) for y in the tube of radius R = d(y, x): small moves,
    and moves far beyond the inputs' norms (random, scaled, reversed), where a is capped."""
    x = _inputs(tiny_adapter, token_ids, 1)
    surrogate = extract_block(tiny_adapter, 1)
    gen = torch.Generator().manual_seed(3)
    base = run_graph(surrogate.graph, surrogate.weights, x)
    small = x + torch.randn(x.shape, generator=gen) * 0.01 * float(x.norm(dim=-1).median())
    for y in [small, x * 50, -x, torch.randn(x.shape, generator=gen) * 100, x.flip(1), x * 1e-3]:
        radius = float((y - x).norm(dim=-1).max())
        out = run_graph(surrogate.graph, surrogate.weights, y)
        lhs = (out - base).norm(dim=-1)
        for shells in (1, 4):  # the shells tighten the attention move the MLP tube reads
            a = sound_lipschitz(surrogate, [x], radius, shells=shells).parts["saturation"]
            assert (lhs <= ((y - x).norm(dim=-1) + a) * (1 + 1e-5)).all(), shells
    near = sound_lipschitz(surrogate, [x], 1e-3 * float(x.norm(dim=-1).median()))
    far = sound_lipschitz(surrogate, [x], 10 * float(x.norm(dim=-1).max()))
    assert near.parts["saturation"] < far.parts["saturation"]


def test_sound_constant_is_finite_at_any_radius_when_eps_is_positive(tiny_llama, token_ids):
    x = _inputs(tiny_llama, token_ids, 1)
    surrogate = extract_block(tiny_llama, 1)
    huge = 2 * float(x.norm(dim=-1).max())
    sound = sound_lipschitz(surrogate, [x], huge)
    assert sound.value is not None and math.isfinite(sound.value)
    assert math.isfinite(sound.parts["saturation"])


@pytest.mark.slow
def test_empirical_estimate_beats_an_independent_ascent(tiny_llama, token_ids):
    k = 1
    x = _inputs(tiny_llama, token_ids, k)
    surrogate = extract_block(tiny_llama, k)
    radius = 1e-2 * float(x.norm(dim=-1).median())
    ours = empirical_lipschitz(surrogate, x, radius, seed=7)
    assert ours.kind == "empirical" and "restarts" in ours.method
    assert ours.value >= independent_ascent(surrogate, x, radius, seed=99)


@pytest.mark.parametrize(
    "capacity", [None, Capacity(head_fraction=0.5, mlp_fraction=0.5)], ids=["full", "reduced"]
)
def test_chain_over_all_blocks_has_a_finite_sound_bound(tiny_llama, token_ids, capacity):
    states = [tiny_llama.embed(token_ids)]
    for k in range(tiny_llama.num_blocks):
        states.append(tiny_llama.block(k, states[-1]))
    blocks = []
    for k in range(tiny_llama.num_blocks):
        full = extract_block(tiny_llama, k)
        g = full if capacity is None else reduce(full, capacity, [states[k]])
        with torch.no_grad():
            eps = float(
                (run_graph(g.graph, g.weights, states[k]) - states[k + 1]).norm(dim=-1).max()
            )
        blocks.append((k, g, capacity is not None, eps))
    search = LipschitzOptions(
        empirical_prompts=1, random_trials=1, ascent_steps=2, restarts=1, refine_tokens=None
    )
    chain = compose_chain(blocks, states[:-1], 2, search, 1e-3)
    assert chain.sound and all(link.bound_sound is not None for link in chain.links)
    assert math.isfinite(float(chain.final_sound)) and chain.final_sound >= 0
    eps, lips, sats = chain.lean_lists("sound")
    assert bound_trajectory(eps, lips, sats)[-1] == chain.final_sound
    assert all(link.bound_empirical is not None for link in chain.links)
    # no empirical prompts: no empirical chain, and the sound chain is the same to the bit
    sound_only = compose_chain(
        blocks, states[:-1], 2, dataclasses.replace(search, empirical_prompts=0), 1e-3
    )
    assert sound_only.final_empirical is None
    for link, same in zip(chain.links, sound_only.links, strict=True):
        assert same.lipschitz_empirical is None and same.bound_empirical is None
        assert (same.lipschitz_sound, same.saturation, same.bound_sound) == (
            link.lipschitz_sound,
            link.saturation,
            link.bound_sound,
        )
    # a targeted phase adds candidates to the same generic ascent: never a smaller estimate
    targeted = compose_chain(
        blocks[:1], states[:1], 2, dataclasses.replace(search, targeted_tokens=2), 1e-3
    )
    first, again = chain.links[0], targeted.links[0]
    assert again.lipschitz_empirical >= first.lipschitz_empirical
    assert "2 targeted token(s)" in again.parts["empirical_method"]
    assert "targeted" not in first.parts["empirical_method"]


def test_lean_and_python_saturated_recursions_agree_on_three_blocks():
    from tests.unit.test_grid import lean_step
    from tests.unit.test_lean_files import parse_instance

    text = (LEAN / "BlockCert" / "Examples" / "SaturationThreeBlocks.lean").read_text()
    den, blocks, claimed = parse_instance(text)
    # the value the kernel proves by `rfl` in `bound_eq` (tests/unit/test_lean_kernel.py runs it)
    lean_value = int(
        re.search(r"theorem bound_eq : Eq \(blocksBound den blocks\) (\d+) := rfl", text).group(1)
    )
    python = grid_trajectory(blocks, den)
    lean = [0]
    for block in blocks:
        lean.append(lean_step(den, block, lean[-1]))
    assert python == lean and python[-1] == lean_value == claimed == 9 * den // 8
    # every product is exact on this grid, so the exact rational recursion agrees
    exact = bound_trajectory(
        [Fraction(b.eps, den) for b in blocks],
        [None if b.lip is None else Fraction(b.lip, den) for b in blocks],
        [None if b.sat is None else Fraction(b.sat, den) for b in blocks],
    )
    assert [Fraction(b, den) for b in python] == exact
    # every branch is exercised: L * B, saturation B + a, and a block without L
    assert python[1] == blocks[0].eps and blocks[0].lip * python[0] == 0
    assert python[2] == python[1] + blocks[1].sat + blocks[1].eps
    assert python[1] + blocks[1].sat < blocks[1].lip * python[1] // den
    assert blocks[2].lip is None


def test_empirical_estimate_is_not_rounding_noise_at_tiny_radii(tiny_llama, token_ids):
    """Far below fp32 resolution the estimate still measures the block (it runs in float64):
    it stays below the sound constant and close to the estimate at a moderate radius."""
    x = _inputs(tiny_llama, token_ids, 1)
    surrogate = extract_block(tiny_llama, 1)
    median = float(x.norm(dim=-1).median())
    tiny = empirical_lipschitz(surrogate, x, 1e-9 * median, 2, 6, seed=3, restarts=2).value
    moderate = empirical_lipschitz(surrogate, x, 1e-4 * median, 2, 6, seed=3, restarts=2).value
    assert tiny <= sound_lipschitz(surrogate, [x], 1e-9 * median).value
    assert abs(tiny - moderate) <= 0.1 * moderate


def test_targeted_tokens_reach_their_own_jacobian(tiny_llama, token_ids):
    """The targeted phase ascends on each chosen token's own output: for the token it targets,
    the ratio reaches that token's own-Jacobian norm ||d g(X)_t / d x_t|| (perturbing x_t alone
    along its top singular vector gives it at small r), and the estimate stays below the sound
    constant; the random starts alone stay below it."""
    from blockcert.cert.lipschitz.empirical import targeted_ascent

    x = _inputs(tiny_llama, token_ids, 1)[:1].double()
    surrogate = extract_block(tiny_llama, 1)
    weights = {k: v.double() for k, v in surrogate.weights.items()}
    radius = 1e-4 * float(x.norm(dim=-1).median())
    base = run_graph(surrogate.graph, weights, x)
    start = torch.zeros_like(x)
    start[0, 5] = radius  # token 5 moves most under this start (causal: tokens >= 5 move)
    moved = (run_graph(surrogate.graph, weights, x + start) - base).norm(dim=-1)[0]
    target = int(moved.argmax())
    own = torch.autograd.functional.jacobian(
        lambda row: run_graph(
            surrogate.graph,
            weights,
            torch.cat([x[:, :target], row[None, None], x[:, target + 1 :]], dim=1),
        )[0, target],
        x[0, target],
    )
    own_norm = float(torch.linalg.matrix_norm(own, 2))
    gen = torch.Generator().manual_seed(0)
    found = targeted_ascent(surrogate.graph, weights, x, radius, start, base, 1, 40, gen)
    assert float(found[0]) >= 0.99 * own_norm, (float(found[0]), own_norm)
    assert float(found[0]) <= sound_lipschitz(surrogate, [x.float()], radius).value
    idle = targeted_ascent(surrogate.graph, weights, x, radius, start, base, 1, 0, gen)
    assert float(idle[0]) < 0.99 * own_norm  # the random starts alone do not reach it


def test_fp32_search_above_its_threshold_measures_what_float64_measures(tiny_llama, token_ids):
    """Where the search runs in float32 (radius >= 1e-3 of the token norms) the ratios it
    evaluates equal the float64 ones to 1e-3 (same random perturbations: no ascent, whose path
    would fork on rounding); below the threshold it runs in float64."""
    x = _inputs(tiny_llama, token_ids, 2)
    surrogate = extract_block(tiny_llama, 2)
    radius = 2 * FLOAT64_BELOW * float(x.norm(dim=-1).amax())
    assert search_dtype(x, radius) == torch.float32
    assert search_dtype(x, radius / 4) == torch.float64
    runs = [
        empirical_ascent(surrogate.graph, surrogate.weights, x, radius, 6, 0, 0, 7, dtype=dtype)
        for dtype in (torch.float32, torch.float64)
    ]
    assert runs[0].method.endswith("in float32") and runs[1].method.endswith("in float64")
    for fp32, fp64 in zip(runs[0].per_prompt, runs[1].per_prompt, strict=True):
        assert abs(fp32 - fp64) <= 1e-3 * fp64


@pytest.mark.parametrize("r", [0.1, 0.7, 1e-6, 3.3])
def test_shells_cover_the_whole_tube(r):
    """The last shell is the tube itself (r * n / n may round below r), the widths are the
    radii's differences, and the shell mean weighs each running maximum by its width."""
    for n in (1, 3, 7, 10):
        radii, widths = shell_radii(r, n)
        assert radii[-1] == r and all(w >= 0 for w in widths)
        assert all(b > a for a, b in zip(radii, radii[1:], strict=False))
        assert abs(sum(widths) - r) <= 1e-15 * r
    total = torch.tensor([[1.0, 5.0], [4.0, 2.0], [2.0, 6.0]], dtype=torch.float64)
    radii, widths = shell_radii(r, 3)
    mean = shell_mean(total, r)
    running = torch.tensor([[1.0, 5.0], [4.0, 5.0], [4.0, 6.0]], dtype=torch.float64)
    expected = (running * torch.tensor(widths, dtype=torch.float64)[:, None]).sum(0) / r
    assert torch.allclose(mean, torch.minimum(expected, total[-1]), rtol=1e-8)
    assert (mean <= total[-1]).all() and (mean >= total.min(0).values).all()
    assert torch.equal(shell_mean(total[:1], r), total[0])
