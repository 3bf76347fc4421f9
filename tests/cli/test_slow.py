"""Slow checks on the real embedded model (pytest -m slow)."""

import copy

import pytest
import torch
from safetensors.torch import load_file

from blockcert.surrogate.capacity import importance, keep_heads, keep_neurons
from blockcert.surrogate.extract import extract_block
from blockcert.surrogate.interpret import run_graph
from blockcert.surrogate.ir import Surrogate
from blockcert.verify.collect import load_certificate
from tests.helpers import run_script


@pytest.mark.slow
def test_trained_surrogate_beats_untrained_pruning_on_smollm2(tmp_path, smollm2):
    """Distillation must improve on importance pruning alone, on the same held-out tokens."""
    proc = run_script(
        "train.py",
        "block=12",
        f"runs_root={tmp_path}",
        f"cache.root={tmp_path}/cache",
        "data.n_train_prompts=192",
        "data.n_heldout_prompts=32",
        "trainer.max_epochs=6",
        "logger=csv",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = list(tmp_path.glob("smollm2/block12/*/certificate.json"))
    cert = load_certificate(path)
    ids = load_file(str(path.parent / "heldout_tokens.safetensors"))["input_ids"]
    x_in, x_out = smollm2.block_pair(ids, 12)

    full = extract_block(smollm2, 12)
    pruned = Surrogate(copy.deepcopy(full.graph), dict(full.weights))
    heads, neurons = importance(full, list(x_in.split(8)))
    capacity = cert["surrogate"]["capacity"]
    keep_heads(pruned, sorted(heads.topk(capacity["heads"]).indices.tolist()))
    keep_neurons(pruned, sorted(neurons.topk(capacity["mlp_width"]).indices.tolist()))
    with torch.no_grad():
        err = (run_graph(pruned.graph, pruned.weights, x_in) - x_out).norm(dim=-1)
    rel = err / x_out.norm(dim=-1)
    assert cert["surrogate"]["params"] == pruned.num_params
    assert cert["metrics"]["rel_mean"] < 0.8 * float(rel.mean())
    assert cert["metrics"]["eps_max"] < float(err.max())
