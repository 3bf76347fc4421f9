"""Cascade training on tiny_llama: block k trains on stitched inputs, teacher-path targets."""

import json

import pytest
import torch

from blockcert.errors import BlockCertError
from blockcert.lit.cascade import (
    CascadeDataModule,
    MemoryBatches,
    StitchedInputs,
    cascade_surrogates,
    distil,
)
from blockcert.surrogate.capacity import Capacity
from blockcert.surrogate.extract import extract_block
from blockcert.surrogate.interpret import run_graph
from tests.helpers import run_script

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


class _TeacherData:
    """The parts of ResidualPairDataModule that CascadeDataModule reads."""

    def __init__(self, pairs):
        self.adapter, self.block, self.prompts = None, 3, None
        self.pairs, self.pairs_source = pairs, {"heldout": "cache:x"}

    def train_pairs_in_order(self):
        return iter(self.pairs)


def test_cascade_datamodule_pairs_stitched_inputs_with_teacher_targets():
    g = torch.Generator().manual_seed(0)
    teacher = [(torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 4, generator=g))] * 3
    stitched = [torch.randn(2, 5, 4, generator=g) for _ in range(3)]
    data = CascadeDataModule(_TeacherData(teacher), stitched)
    for (x_in, x_out), h, (_, target) in zip(data.pairs, stitched, teacher, strict=True):
        assert x_in is h and x_out is target
    assert data.block == 3 and "train_inputs" in data.pairs_source
    with pytest.raises(BlockCertError, match="line up"):
        CascadeDataModule(_TeacherData(teacher), [torch.zeros(2, 6, 4)] * 3)


def test_stitched_inputs_refuse_going_back(tiny_llama):
    stream = StitchedInputs(tiny_llama, _ids(n=2), 2)
    stream.at(2)
    with pytest.raises(BlockCertError):
        stream.at(1)
    with pytest.raises(BlockCertError):
        stream.fitted(0, None)


@pytest.mark.slow  # train.py blocks=all on tiny_llama, then certify.py: ~1 min
def test_train_blocks_all_cascade_certifies(tmp_path):
    proc = run_script(
        "train.py",
        "model=tiny_llama",
        "blocks=all",
        "cascade=true",
        "surrogate.mlp_fraction=0.5",
        f"runs_root={tmp_path}",
        f"cache.root={tmp_path}/cache",
        "data.n_train_prompts=16",
        "data.n_heldout_prompts=8",
        "data.seq_len=32",
        "trainer.max_epochs=2",
        "logger=csv",
        "lipschitz.empirical_prompts=2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    certificates = sorted((tmp_path / "tiny_llama").rglob("certificate.json"))
    assert len(certificates) == 4
    for path in certificates:
        certificate = json.loads(path.read_text())
        assert certificate["config"]["cascade"] is True
        assert "stitched" in certificate["data"]["pairs_source"]["train_inputs"]
    out = tmp_path / "report"
    proc = run_script(
        "certify.py",
        "model=tiny_llama",
        f"runs={tmp_path / 'tiny_llama'}",
        f"out={out}",
        f"lean.root={tmp_path}/lean",
        "lipschitz.random_trials=2",
        "lipschitz.ascent_steps=3",
        "lean.build=false",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
