"""Surrogate IR: full capacity is exactly the teacher block; reductions keep the structure."""

import subprocess
import sys

import pytest
import torch

from blockcert.surrogate import interpret
from blockcert.surrogate.capacity import Capacity, reduce
from blockcert.surrogate.extract import extract_block
from blockcert.surrogate.interpret import run_graph, run_values
from blockcert.surrogate.ir import load_surrogate, save_surrogate
from blockcert.surrogate.view import BlockView


def test_full_capacity_equals_teacher_block(tiny_adapter, token_ids):
    for k in range(tiny_adapter.num_blocks):
        x_in, x_out = tiny_adapter.block_pair(token_ids, k)
        surrogate = extract_block(tiny_adapter, k)
        torch.testing.assert_close(
            run_graph(surrogate.graph, surrogate.weights, x_in), x_out, atol=1e-5, rtol=0
        )


def test_full_capacity_equals_smollm2_block12(smollm2):
    ids = smollm2.teacher.tokenizer(
        "To be, or not to be: that is the question", return_tensors="pt"
    )
    x_in, x_out = smollm2.block_pair(ids.input_ids, 12)
    surrogate = extract_block(smollm2, 12)
    out = run_graph(surrogate.graph, surrogate.weights, x_in)
    assert (out - x_out).norm(dim=-1).max() <= 1e-4
    torch.testing.assert_close(out, x_out, atol=1e-5, rtol=1e-6)


def test_run_values_stops_once_the_wanted_values_exist(tiny_adapter, token_ids, monkeypatch):
    x_in, _ = tiny_adapter.block_pair(token_ids, 1)
    surrogate = extract_block(tiny_adapter, 1)
    names = (BlockView.HIDDEN, BlockView.MID)
    _, expected = run_graph(surrogate.graph, surrogate.weights, x_in, keep=names)
    computed = []
    run_node = interpret.run_node

    def recording(node, values, weights):
        computed.append(node.output)
        return run_node(node, values, weights)

    monkeypatch.setattr(interpret, "run_node", recording)
    values = run_values(surrogate.graph, surrogate.weights, x_in, names)
    assert all(torch.equal(values[name], expected[name]) for name in names)
    # the last projection and the residual add after it are never evaluated
    assert surrogate.graph.output not in computed
    assert len(computed) < len(surrogate.graph.nodes)
    with pytest.raises(KeyError, match="no value named"):
        run_values(surrogate.graph, surrogate.weights, x_in, ("no_such_value",))


def test_ir_roundtrip_is_bitwise(tiny_llama, token_ids, tmp_path):
    x_in, _ = tiny_llama.block_pair(token_ids, 1)
    capacity = Capacity(head_fraction=0.5, mlp_fraction=0.5, rank_fraction=0.5)
    surrogate = reduce(extract_block(tiny_llama, 1), capacity, [x_in])
    hashes = save_surrogate(surrogate, tmp_path)
    loaded = load_surrogate(tmp_path)
    x = torch.randn(2, 7, 64)
    assert torch.equal(
        run_graph(surrogate.graph, surrogate.weights, x), run_graph(loaded.graph, loaded.weights, x)
    )
    assert set(hashes) == {"surrogate.json", "surrogate.safetensors"}


@pytest.mark.parametrize(
    "heads,width,rank", [(0.5, 0.5, None), (0.25, 1.0, None), (1.0, 1.0, 0.25)]
)
def test_reduced_surrogate_counts(tiny_adapter, token_ids, heads, width, rank):
    full = extract_block(tiny_adapter, 1)
    x_in, _ = tiny_adapter.block_pair(token_ids, 1)
    capacity = Capacity(head_fraction=heads, mlp_fraction=width, rank_fraction=rank)
    reduced = reduce(full, capacity, [x_in])
    cap = reduced.graph.capacity
    assert cap["heads"] == max(1, round(heads * full.graph.capacity["heads"]))
    assert cap["mlp_width"] == round(width * full.graph.capacity["mlp_width"])
    assert reduced.num_params < full.num_params
    assert run_graph(reduced.graph, reduced.weights, x_in).shape == x_in.shape


def test_pruning_keeps_the_most_important_heads(tiny_llama, token_ids):
    """Dropping the least important heads costs less than dropping the most important."""
    full = extract_block(tiny_llama, 1)
    x_in, x_out = tiny_llama.block_pair(token_ids, 1)
    kept = reduce(full, Capacity(head_fraction=0.5), [x_in])
    from blockcert.surrogate.capacity import importance, keep_heads

    scores, _ = importance(full, [x_in])
    worst = reduce(full, Capacity(), [])
    keep_heads(worst, sorted(scores.topk(2, largest=False).indices.tolist()))
    err_kept = (run_graph(kept.graph, kept.weights, x_in) - x_out).norm()
    err_worst = (run_graph(worst.graph, worst.weights, x_in) - x_out).norm()
    assert err_kept < err_worst


def test_interpreter_does_not_import_training_code():
    code = (
        "import sys, blockcert.surrogate.interpret, blockcert.surrogate.ir;"
        "bad=[m for m in sys.modules if m.split('.')[0] in ('lightning','blockcert.lit')"
        " or m.startswith('blockcert.lit')];print(bad);assert not bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
