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
    stats = metrics.block_error_stats(surrogate, x_in, x_out, taus)
    assert float(errors.max()) > 0
    torch.testing.assert_close(stats.per_token_sq.sqrt(), errors, rtol=1e-5, atol=1e-6)
    assert stats.max_error == pytest.approx(float(errors.max()), rel=1e-5)
    assert stats.n == errors.numel()
    assert stats.counts.tolist() == [int((errors <= t).sum()) for t in taus]
