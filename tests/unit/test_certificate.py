"""Coverage intervals, spectral bounds, Lipschitz labels and certificate hashing."""

import json
import math

import pytest
import torch
from scipy.stats import binomtest

from blockcert.cert.coverage import Coverage, clopper_pearson_upper
from blockcert.cert.lipschitz import empirical_lipschitz, sound_lipschitz
from blockcert.cert.spectral import spectral_norm_upper
from blockcert.errors import VerificationError
from blockcert.surrogate.capacity import Capacity, reduce
from blockcert.surrogate.extract import extract_block
from blockcert.surrogate.interpret import run_graph
from blockcert.verify.collect import load_certificate


@pytest.mark.parametrize("misses,n", [(0, 100), (3, 100), (50, 1000), (7, 7)])
def test_clopper_pearson_matches_scipy_exact_interval(misses, n):
    delta = 0.05
    # two-sided exact interval at level 1 - 2 delta has the one-sided upper end at 1 - delta
    ref = binomtest(misses, n).proportion_ci(confidence_level=1 - 2 * delta, method="exact").high
    assert clopper_pearson_upper(misses, n, delta) == pytest.approx(ref, rel=1e-9)


def test_zero_misses_rule_of_three():
    assert Coverage("abs", "prompt", 1.0, 1000, 1000, 0.05).miss_rate_upper == pytest.approx(
        1 - 0.05 ** (1 / 1000), rel=1e-9
    )


@pytest.mark.parametrize("shape", [(64, 64), (256, 64), (3, 200), (1, 5)])
def test_spectral_upper_bound_is_sound_and_tight(shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = float(torch.linalg.matrix_norm(w, 2))
    upper = spectral_norm_upper(w)
    assert exact <= upper <= exact * 1.03


def test_sound_lipschitz_dominates_observed_ratios(tiny_adapter, token_ids):
    x_in, _ = tiny_adapter.block_pair(token_ids, 1)
    full = extract_block(tiny_adapter, 1)
    surrogate = reduce(full, Capacity(head_fraction=0.5, mlp_fraction=0.5), [x_in])
    radius = 1e-3 * float(x_in.norm(dim=-1).min())
    sound = sound_lipschitz(surrogate, [x_in], radius)
    empirical = empirical_lipschitz(surrogate, x_in, radius, random_trials=4, ascent_steps=5)
    assert sound.kind == "sound" and empirical.kind == "empirical"
    assert sound.value is not None and math.isfinite(sound.value)
    assert empirical.value <= sound.value


def test_sound_lipschitz_is_finite_when_the_tube_reaches_zero(tiny_llama, token_ids):
    """With eps > 0 the norm factor stays finite even when the tube contains 0: the sound
    constant is finite and still dominates an observed ratio at that radius."""
    x_in, _ = tiny_llama.block_pair(token_ids, 1)
    surrogate = extract_block(tiny_llama, 1)
    huge = 2 * float(x_in.norm(dim=-1).max())
    sound = sound_lipschitz(surrogate, [x_in], huge)
    assert sound.value is not None and math.isfinite(sound.value)
    gen = torch.Generator().manual_seed(5)
    delta = torch.randn(x_in.shape, generator=gen)
    delta = delta * (huge / delta.norm(dim=-1, keepdim=True))
    with torch.no_grad():
        base = run_graph(surrogate.graph, surrogate.weights, x_in)
        moved = run_graph(surrogate.graph, surrogate.weights, x_in + delta)
    ratio = (moved - base).norm(dim=-1).amax(-1) / delta.norm(dim=-1).amax(-1)
    assert sound.value >= float(ratio.max())


def test_tampered_certificate_is_rejected(forged):
    path = forged / "certificate.json"
    claimed = load_certificate(path)["metrics"]["eps_max"]
    data = json.loads(path.read_text())
    data["metrics"]["eps_max"] = claimed / 2
    path.write_text(json.dumps(data))
    with pytest.raises(VerificationError, match="certificate_sha256"):
        load_certificate(path)


def test_a_sound_constant_vacuous_at_its_radius_says_so():
    """vacuous: L*r >= r + a, so min(L*B, B + a) steps by B + a at the certificate's radius."""
    from blockcert.cert.certificate import lipschitz_claim
    from blockcert.cert.lipschitz import Lipschitz
    from blockcert.train import lipschitz_shown

    def claim(value, radius, a, kind="sound"):
        return lipschitz_claim(Lipschitz(value, kind, radius, "m", {"saturation": a}))

    assert claim(5.8e6, 0.08, 5.79)["vacuous"] is True
    assert claim(10.0, 1.0, 20.0)["vacuous"] is False
    assert claim(None, 1.0, 2.0)["vacuous"] is None
    assert claim(3.0, 1.0, 0.5, kind="empirical")["vacuous"] is None
    shown = lipschitz_shown(claim(5.8e6, 0.08, 5.79), ".6g")
    assert "vacuous at this radius" in shown and "B + a" in shown
    assert "vacuous" not in lipschitz_shown(claim(10.0, 1.0, 20.0), ".6g")
