"""Statements about fresh prompts: order statistics = Clopper-Pearson, and the check split."""

import dataclasses
import math

import pytest
import torch

from blockcert.capture.corpus import ShakespeareCorpus
from blockcert.capture.prompts import build_prompts
from blockcert.cert.lipschitz import LipschitzOptions
from blockcert.evaluate.statistics import (
    PromptConstants,
    compositional_bound,
    event_misses,
)
from blockcert.evaluate.trajectory import evaluate_prompts, ragged_teacher_trajectory
from blockcert.surrogate.extract import extract_block


def _perturbed(adapter, k, scale):
    surrogate = extract_block(adapter, k)
    g = torch.Generator().manual_seed(k)
    weights = {
        n: w + scale * w.std() * torch.randn(w.shape, generator=g)
        for n, w in surrogate.weights.items()
    }
    return dataclasses.replace(surrogate, weights=weights)


def _binomial_tail(n: int, p: float, k: int) -> float:
    """P(Binomial(n, p) >= k)."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


@pytest.mark.slow
def test_statements_hold_on_the_untouched_check_split(tiny_llama):
    split = build_prompts(ShakespeareCorpus(), tiny_llama.teacher.tokenizer, 16, 8, 48, seed=2)
    surrogates = {2: _perturbed(tiny_llama, 2, 0.05)}
    chain = [(k, surrogates.get(k) or extract_block(tiny_llama, k)) for k in (2, 3)]
    taus = {2: 1.0}
    held, check = list(split.heldout), list(split.rest[:48])  # untouched: the pool's rest
    held_traj = ragged_teacher_trajectory(tiny_llama, held, 16)
    held_eval = evaluate_prompts(tiny_llama, surrogates, held, held_traj, taus)
    check_traj = ragged_teacher_trajectory(tiny_llama, check, 16)
    check_eval = evaluate_prompts(tiny_llama, surrogates, check, check_traj, taus)
    # (b) compositional (random tiny weights: the sound chain is unbounded, so empirical L)
    search = LipschitzOptions(random_trials=1, ascent_steps=1)
    options = PromptConstants("empirical", search, min_radius=1e-3)
    comp = compositional_bound(chain, held_traj, held_eval, delta=0.05, options=options)
    assert comp.n_calibration == 24 and [e.n for e in comp.events] == [24] * 3
    assert comp.bounds[1] == pytest.approx(comp.taus[0], rel=1e-6)  # B_1 = tau_1 (B_0 = 0)
    # B_k = L^_k B_{k-1} + tau_k, recomputed here independently of compose.bound
    b = 0.0
    for tau, lip, bk in zip(comp.taus, comp.lipschitz, comp.bounds[1:], strict=True):
        b = lip * b + tau
        assert bk == pytest.approx(b, rel=1e-6)
    misses = event_misses(chain, check_traj, check_eval, range(len(check)), comp, options)
    result = comp.check(misses, check_eval.final_deviation)
    assert result["within"], (comp.statement(), result)
    # the check split is itself a sample: its count of prompts with any event must not be
    # significantly above the stated joint rate (binomial tail, level 1e-3)
    n_check, n_any = len(check), round(result["any_event_fraction"] * len(check))
    assert _binomial_tail(n_check, comp.joint_upper, n_any) >= 1e-3, (n_any, comp.joint_upper)
    assert result["beyond_bound_fraction"] == 0.0
