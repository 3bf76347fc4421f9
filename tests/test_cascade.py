"""Cascade training on tiny_llama: block k trains on stitched inputs, teacher-path targets."""

import torch

from blockcert.lit.cascade import MemoryBatches, cascade_surrogates, distil
from blockcert.surrogate.capacity import Capacity
from blockcert.surrogate.extract import extract_block
from blockcert.surrogate.interpret import run_graph

CUT = Capacity(head_fraction=0.5, mlp_fraction=0.5)


def _ids(n=12, s=16, seed=1):
    return torch.randint(0, 256, (n, s), generator=torch.Generator().manual_seed(seed))


def _run(adapter, ids, stitched):
    seen = {}

    def build(k, inputs):
        return CUT.build(extract_block(adapter, k), inputs)

    def fit(k, surrogate, pairs):
        seen[k] = pairs
        return distil(surrogate, pairs, max_epochs=1, optim={"lr": 1e-3})

    surrogates = cascade_surrogates(adapter, ids, 4, build, fit, stitched=stitched)
    return surrogates, seen


def _cat(pairs, i):
    return torch.cat([p[i] for p in pairs])


def test_cascade_inputs_are_the_stitched_ones(tiny_llama):
    ids = _ids()
    surrogates, seen = _run(tiny_llama, ids, stitched=True)
    assert sorted(surrogates) == sorted(seen) == list(range(tiny_llama.num_blocks))
    with torch.no_grad():
        stitched = tiny_llama.embed(ids).float()  # independent reference: h~_k from embeddings
        teacher = stitched
        for k in range(tiny_llama.num_blocks):
            x_in, x_out = _cat(seen[k], 0), _cat(seen[k], 1)
            torch.testing.assert_close(x_in, stitched, rtol=0, atol=1e-5)
            teacher_out = tiny_llama.block(k, teacher).float()
            torch.testing.assert_close(x_out, teacher_out, rtol=0, atol=1e-5)  # teacher path
            if k > 0:  # upstream surrogates drifted: the inputs are not the teacher's
                assert (x_in - teacher).norm(dim=-1).max() > 1e-3
            g = surrogates[k]
            stitched = run_graph(g.graph, g.weights, stitched)
            teacher = teacher_out


def test_per_block_distillation_reads_teacher_inputs(tiny_llama):
    ids = _ids()
    _, seen = _run(tiny_llama, ids, stitched=False)
    for k in range(tiny_llama.num_blocks):
        h_k, h_next = tiny_llama.block_pair(ids, k)
        torch.testing.assert_close(_cat(seen[k], 0), h_k.float(), rtol=0, atol=1e-5)
        torch.testing.assert_close(_cat(seen[k], 1), h_next.float(), rtol=0, atol=1e-5)


def test_cascade_fits_only_requested_blocks(tiny_llama):
    ids = _ids(n=4)

    def fit(k, surrogate, pairs):
        return surrogate

    surrogates = cascade_surrogates(
        tiny_llama, ids, 2, lambda k, x: CUT.build(extract_block(tiny_llama, k), x), fit, [1, 2]
    )
    assert sorted(surrogates) == [1, 2]


def test_memory_batches_reshuffle_every_epoch():
    data = MemoryBatches(list(range(20)), shuffle=True, seed=3)
    first, second = list(data), list(data)
    assert sorted(first) == sorted(second) == list(range(20))
    assert first != second
    assert list(MemoryBatches(list(range(5)), shuffle=False)) == list(range(5))
