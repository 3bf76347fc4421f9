"""block_error_stats: both routes (fused last projection, materialised output) give the errors
of the surrogate's own output, measured independently."""

import pytest
import torch

from blockcert.cert import metrics
from blockcert.surrogate.capacity import Capacity, reduce
from blockcert.surrogate.extract import extract_block
from blockcert.surrogate.interpret import run_graph


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "materialised"])
def test_block_error_stats_match_the_graph_output(tiny_adapter, token_ids, monkeypatch, fused):
    x_in, x_out = tiny_adapter.block_pair(token_ids, 1)
    capacity = Capacity(head_fraction=0.5, mlp_fraction=0.5)
    surrogate = reduce(extract_block(tiny_adapter, 1), capacity, [x_in])
    # the route is chosen by where the Triton kernel runs; on CPU the fused route's kernel
    # falls back to its plain-torch reference
    monkeypatch.setattr(metrics, "use_triton", lambda t: fused)
    errors = (run_graph(surrogate.graph, surrogate.weights, x_in) - x_out).norm(dim=-1).flatten()
    ordered = errors.sort().values
    half = len(ordered) // 2  # a tau between two tokens: counts do not hinge on the last bit
    taus = [float(ordered[half - 1] + ordered[half]) / 2, float(errors.max()) * 2]
    stats, exact = metrics.block_error_stats(surrogate, x_in, x_out, taus)
    assert exact is None if fused else exact.tolist() == [False] * len(x_in)
    assert float(errors.max()) > 0
    torch.testing.assert_close(stats.per_token_sq.sqrt(), errors, rtol=1e-5, atol=1e-6)
    assert stats.max_error == pytest.approx(float(errors.max()), rel=1e-5)
    assert stats.n == errors.numel()
    assert stats.counts.tolist() == [int((errors <= t).sum()) for t in taus]


def test_exact_prompts_are_those_whose_output_equals_the_target(tiny_adapter, token_ids):
    x_in, x_out = tiny_adapter.block_pair(token_ids, 1)
    surrogate = reduce(
        extract_block(tiny_adapter, 1), Capacity(head_fraction=0.5, mlp_fraction=0.5), [x_in]
    )
    target = x_out.clone()
    target[0] = run_graph(surrogate.graph, surrogate.weights, x_in)[0]  # prompt 0 reproduced
    pairs = [(x_in[:2], target[:2]), (x_in[2:], target[2:])]
    report = metrics.measure_errors(surrogate, pairs, [0.1], [0.1], 0.05)
    assert report.exact_prompts.tolist() == [True] + [False] * (len(x_in) - 1)
    assert report.eps_max > 0 and "exact_prompts" not in report.to_dict()
