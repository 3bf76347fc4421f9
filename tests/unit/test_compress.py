"""Compression: normal equations, structured OBS, the literature's scores and compensations,
the budget and the recipe's options."""

import pytest
import torch

from blockcert.compress.budget import Budget
from blockcert.compress.cut import MlpStats, Pruning, cut_heads, cut_neurons
from blockcert.compress.lstsq import NormalEquations, obs_keep, solve
from blockcert.compress.recipe import Recipe
from blockcert.compress.scores import standardized_widths, wanda_sp
from blockcert.errors import BlockCertError
from blockcert.surrogate.extract import extract_block
from blockcert.surrogate.interpret import run_graph, run_values
from blockcert.surrogate.view import block_view


def _problem(n=8, d=5, tokens=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(tokens, n, generator=g) @ torch.randn(n, n, generator=g)
    y = a @ torch.randn(n, d, generator=g) + 0.5 * torch.randn(tokens, d, generator=g) + 2.0
    equations = NormalEquations(n, d)
    for chunk in range(0, tokens, 70):  # streamed in uneven batches
        equations.add(a[chunk : chunk + 70], y[chunk : chunk + 70])
    return a, y, equations


def _ls_loss(a, y, kept, bias):
    x = a[:, kept].double()
    if bias:
        x = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    beta = torch.linalg.lstsq(x, y.double()).solution
    return float((x @ beta - y.double()).pow(2).sum())


@pytest.mark.parametrize("bias", [False, True])
def test_solve_matches_lstsq(bias):
    a, y, equations = _problem()
    kept = torch.tensor([0, 2, 3, 6])
    weight, b = solve(equations, kept, bias, ridge=0.0)
    x = a[:, kept].double()
    if bias:
        x = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    reference = torch.linalg.lstsq(x, y.double()).solution
    assert torch.allclose(weight.double(), reference[:4].T, atol=1e-4)
    if bias:
        assert torch.allclose(b.double(), reference[4], atol=1e-4)
    else:
        assert b is None


@pytest.mark.parametrize("bias", [False, True])
def test_obs_removes_neurons_as_brute_force_greedy(bias):
    """One removal per round: each step removes the feature whose loss after re-solving is
    least, computed here by refitting every candidate from scratch."""
    a, y, equations = _problem(seed=1)
    alive = list(range(8))
    while len(alive) > 3:
        losses = {j: _ls_loss(a, y, [i for i in alive if i != j], bias) for j in alive}
        alive.remove(min(losses, key=losses.get))
    kept = obs_keep(equations, 3, bias=bias, ridge=0.0, steps=8)
    assert kept.tolist() == sorted(alive)


def test_obs_removes_heads_as_brute_force_greedy():
    a, y, equations = _problem(n=12, seed=2)
    groups = [list(range(3 * h, 3 * h + 3)) for h in range(4)]
    alive = [0, 1, 2, 3]
    while len(alive) > 2:
        losses = {
            j: _ls_loss(a, y, [i for h in alive if h != j for i in groups[h]], True) for j in alive
        }
        alive.remove(min(losses, key=losses.get))
    kept = obs_keep(equations, 2, group_size=3, ridge=0.0)
    assert kept.tolist() == [i for h in sorted(alive) for i in groups[h]]


def test_obs_is_never_worse_than_the_best_of_random_subsets():
    a, y, equations = _problem(n=10, seed=3)
    obs = _ls_loss(a, y, obs_keep(equations, 5, ridge=0.0).tolist(), True)
    g = torch.Generator().manual_seed(0)
    subsets = [torch.randperm(10, generator=g)[:5].tolist() for _ in range(20)]
    assert obs <= min(_ls_loss(a, y, s, True) for s in subsets) + 1e-6


def test_obs_rejects_impossible_counts():
    _, _, equations = _problem()
    with pytest.raises(BlockCertError, match="cannot keep"):
        obs_keep(equations, 9)


def _block_stats(tiny_llama, k=1, n=6):
    ids = torch.randint(0, 256, (n, 20), generator=torch.Generator().manual_seed(k))
    x, y = tiny_llama.block_pair(ids, k)
    full = extract_block(tiny_llama, k)
    values = run_values(full.graph, full.weights, x, ("resid_attn", "hidden", "mlp_norm"))
    equations = NormalEquations(values["hidden"].shape[-1], x.shape[-1])
    equations.add(values["hidden"], y - values["resid_attn"])
    input_sq = values["mlp_norm"].reshape(-1, x.shape[-1]).double().pow(2).sum(0)
    return full, MlpStats(equations, input_sq), x, y, values


def test_flap_bias_keeps_the_mean_output(tiny_llama):
    """FLAP's compensation: the cut block's mean output over the calibration tokens equals
    the full block's (attention unchanged, so the mean hidden units are those measured)."""
    full, stats, x, y, _ = _block_stats(tiny_llama)
    cut = cut_neurons(full, stats, 40, Pruning("fluctuation", "mean"))
    assert block_view(cut).mlp.width == 40
    out = run_graph(cut.graph, cut.weights, x)
    plain = cut_neurons(full, stats, 40, Pruning("fluctuation", "none"))
    out_plain = run_graph(plain.graph, plain.weights, x)
    reference = run_graph(full.graph, full.weights, x)
    mean_gap = (out - reference).reshape(-1, x.shape[-1]).mean(0).norm()
    plain_gap = (out_plain - reference).reshape(-1, x.shape[-1]).mean(0).norm()
    assert mean_gap < 1e-4 * reference.norm(dim=-1).mean()
    assert plain_gap > 100 * mean_gap


def test_least_squares_update_beats_the_plain_cut_on_calibration_tokens(tiny_llama):
    full, stats, x, y, _ = _block_stats(tiny_llama)
    errors = {}
    for update in ("none", "mean", "ls"):
        cut = cut_neurons(full, stats, 48, Pruning("importance", update))
        errors[update] = float((run_graph(cut.graph, cut.weights, x) - y).pow(2).sum())
    assert errors["ls"] < errors["mean"] < errors["none"]


def test_wanda_sp_matches_its_definition(tiny_llama):
    full, stats, x, y, values = _block_stats(tiny_llama)
    view = block_view(full)
    hidden = values["hidden"].reshape(-1, view.mlp.width)
    normed = values["mlp_norm"].reshape(-1, view.d_model)
    tokens = len(hidden)
    expected = torch.zeros(view.mlp.width, dtype=torch.float64)
    for j in range(view.mlp.width):
        # |weight| times the RMS of the input it multiplies, over every weight of neuron j
        expected[j] += (
            hidden[:, j].double().pow(2).mean().sqrt() * view.mlp.down.weight[:, j].abs().sum()
        )
        for p in (view.mlp.gate, view.mlp.up):
            rms = normed.double().pow(2).sum(0).div(tokens).sqrt()
            expected[j] += (p.weight[j].double().abs() * rms).sum()
    assert torch.allclose(wanda_sp(view, stats.hidden, stats.input_sq), expected, rtol=1e-5)


def test_head_cut_keeps_whole_heads_and_their_kv_heads(tiny_llama):
    full = extract_block(tiny_llama, 2)
    ids = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(5))
    x, _ = tiny_llama.block_pair(ids, 2)
    values = run_values(full.graph, full.weights, x, ("attn", "resid_attn"))
    equations = NormalEquations(values["attn"].shape[-1], x.shape[-1])
    equations.add(values["attn"], values["resid_attn"] - x)
    for select in ("obs", "importance", "fluctuation", "wanda_sp"):
        cut = cut_heads(full, equations, 2, Pruning(select, "ls"))
        view = block_view(cut)
        assert view.attention.n_heads == 2
        assert cut.graph.capacity["heads"] == 2 and cut.num_params < full.num_params


def test_uncut_blocks_never_outgrow_the_teacher_block(tiny_llama):
    """A block the budget leaves at full width (or with every head) is refitted without a new
    bias: certify.py refuses a surrogate with more parameters than its teacher block; a cut
    block gains the bias and stays smaller."""
    full, stats, x, y, values = _block_stats(tiny_llama)
    obs = Pruning("obs", "ls")
    same = cut_neurons(full, stats, block_view(full).mlp.width, obs)
    assert same.num_params == full.num_params
    assert "bias" not in same.graph.node("mlp_out").weights
    cut = cut_neurons(full, stats, block_view(full).mlp.width - 1, obs)
    assert "bias" in cut.graph.node("mlp_out").weights and cut.num_params < full.num_params
    attention = run_values(full.graph, full.weights, x, ("attn",))["attn"]
    equations = NormalEquations(attention.shape[-1], x.shape[-1])
    equations.add(attention, values["resid_attn"] - x)
    heads = block_view(full).attention.n_heads
    assert cut_heads(full, equations, heads, obs).num_params == full.num_params


def test_standardized_widths_spend_the_budget():
    scores = [torch.rand(50), 10 * torch.rand(50), torch.rand(50) + 5]
    widths = standardized_widths(scores, 90, floor=5)
    assert sum(widths) == 90 and min(widths) >= 5


@pytest.mark.parametrize("fraction", [0.9, 0.75, 0.6, 0.5])
def test_param_fraction_sets_the_width(tiny_llama, fraction):
    full, stats, *_ = _block_stats(tiny_llama, k=0)
    width = Budget(mlp_fraction=None, param_fraction=fraction).width(full, bias_params=64)
    cut = cut_neurons(full, stats, width, Pruning())  # LS with a bias of d = 64
    per_neuron = 3 * 64  # gate and up rows, down column
    assert abs(cut.num_params - fraction * full.num_params) <= per_neuron / 2


@pytest.mark.parametrize(
    "kwargs", [{}, {"mlp_fraction": None}, {"param_fraction": 0.5}, {"head_fraction": 0.0}]
)
def test_budget_rejects_bad_settings(kwargs):
    if kwargs == {}:
        Budget()  # the default is valid
        return
    with pytest.raises(BlockCertError):
        Budget(**kwargs)


def test_recipe_builds_its_sections_from_mappings():
    recipe = Recipe(budget={"mlp_fraction": 0.5}, pruning={"select": "wanda_sp", "update": "none"})
    assert recipe.budget.mlp_fraction == 0.5 and recipe.pruning.select == "wanda_sp"
    assert recipe.bias_params == 0
    with pytest.raises(BlockCertError, match="select"):
        Recipe(pruning={"select": "magic"})
