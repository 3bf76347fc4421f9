"""The joint statement about fresh prompts: its size rule, its meaning, and its coverage."""

import dataclasses
import math

import pytest
import torch

from blockcert.capture.corpus import ShakespeareCorpus
from blockcert.capture.prompts import build_prompts
from blockcert.cert.coverage import clopper_pearson_upper
from blockcert.evaluate.fresh_eval import METRICS, evaluate_fresh
from blockcert.evaluate.statement import calibration_size, joint_statement, scores
from blockcert.surrogate.extract import extract_block


def test_calibration_size_is_the_fewest_prompts_reaching_the_target():
    n = calibration_size(0.99, 0.01)
    assert n == 459  # ln(0.01) / ln(0.99) = 458.2
    assert clopper_pearson_upper(0, n, 0.01) <= 0.01 < clopper_pearson_upper(0, n - 1, 0.01)


def test_the_max_of_n_gives_the_closed_form_miss_rate():
    """One metric, n values, target below any reachable bound: t is the max, m = 1 - delta^(1/n)."""
    values = {"v": torch.rand(50, generator=torch.Generator().manual_seed(0))}
    statement = joint_statement(values, {"v": 1.0}, 0.95, 1e-6, "test")
    assert statement.score_threshold == float(values["v"].max()) and statement.n_exceed == 0
    assert statement.miss_upper == pytest.approx(1 - 0.05 ** (1 / 50), rel=1e-9)


@pytest.mark.parametrize("j_max", [0, 3])
def test_the_order_statistic_is_exact_for_continuous_values(j_max):
    """Uniform values: the true exceedance of a threshold t is 1 - t; the statement fails in
    a share of draws equal to (not merely below) 1 - confidence."""
    g = torch.Generator().manual_seed(1)
    n, delta, trials, failures = 40, 0.1, 2000, 0
    target = clopper_pearson_upper(j_max, n, delta) + 1e-12  # lets exactly j_max exceedances
    for _ in range(trials):
        statement = joint_statement({"v": torch.rand(n, generator=g)}, {"v": 1.0}, 0.9, target, "u")
        failures += (1 - statement.score_threshold) > statement.miss_upper
    assert failures / trials <= delta + 3 * (delta * (1 - delta) / trials) ** 0.5
    assert failures / trials >= delta / 2


def test_the_statement_bounds_every_metric_at_once():
    g = torch.Generator().manual_seed(0)
    values = {name: torch.rand(200, generator=g) * (i + 1) for i, name in enumerate(METRICS)}
    scales = {name: float(v[:20].max()) for name, v in values.items()}
    statement = joint_statement(values, scales, 0.9, 0.05, "test prompts")
    inside = scores(values, scales) <= statement.score_threshold
    for name, threshold in statement.thresholds.items():
        assert bool((values[name][inside] <= threshold + 1e-12).all())
    assert statement.n_exceed == int((~inside).sum())
    assert statement.miss_upper == clopper_pearson_upper(statement.n_exceed, 200, 0.1) <= 0.05


def test_a_zero_scale_makes_any_nonzero_value_a_miss():
    values = {"a": torch.tensor([0.0, 0.0, 1e-9]), "b": torch.tensor([1.0, 2.0, 0.5])}
    assert scores(values, {"a": 0.0, "b": 2.0}).tolist() == [0.5, 1.0, math.inf]


def _perturbed(adapter, k, scale):
    surrogate = extract_block(adapter, k)
    g = torch.Generator().manual_seed(k)
    weights = {
        n: w + scale * w.std() * torch.randn(w.shape, generator=g)
        for n, w in surrogate.weights.items()
    }
    return dataclasses.replace(surrogate, weights=weights)


@pytest.mark.parametrize("confidence,miss", [(0.9, 0.1), (0.8, 0.2)])
def test_the_stated_miss_rate_holds_at_its_confidence_on_tiny_llama(tiny_llama, confidence, miss):
    """Real per-prompt metrics of a perturbed tiny_llama block over a pool of 360 prompts; many
    calibration draws from the pool: the pool's true fraction beyond each statement exceeds
    the stated miss rate in at most a (1 - confidence) share of the draws."""
    split = build_prompts(ShakespeareCorpus(), tiny_llama.teacher.tokenizer, 16, 1, 380, seed=5)
    prompts = list(split.heldout)
    metrics = evaluate_fresh(tiny_llama, {1: _perturbed(tiny_llama, 1, 0.05)}, set(), prompts, 64)
    values = metrics.values
    assert all(bool((v > 0).any()) for v in values.values())
    scales = {name: float(v[:20].max()) for name, v in values.items()}  # a separate own split
    pool = {name: v[20:] for name, v in values.items()}
    g = torch.Generator().manual_seed(9)
    trials, failures, n = 400, 0, 40
    for _ in range(trials):
        rows = torch.randperm(360, generator=g)[:n]
        statement = joint_statement(
            {k: v[rows] for k, v in pool.items()}, scales, confidence, miss, "tiny"
        )
        true_miss = float((scores(pool, scales) > statement.score_threshold).double().mean())
        failures += true_miss > statement.miss_upper
    delta = 1 - confidence
    assert failures / trials <= delta + 3 * math.sqrt(delta * (1 - delta) / trials)
