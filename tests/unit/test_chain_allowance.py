"""chain_allowance: fp(h_k) at the teacher inputs and fp(s_k) at the stitched inputs, each equal to
fp_error measured directly on those inputs."""

from blockcert.cert import fp_allowance
from blockcert.cert.fp_allowance import chain_allowance, fp_error
from blockcert.evaluate.trajectory import teacher_trajectory
from blockcert.surrogate.capacity import Capacity, reduce
from blockcert.surrogate.extract import extract_block
from blockcert.surrogate.interpret import run_graph


def _batches(states, k):
    return [states[k][i : i + 2] for i in range(0, len(states[k]), 2)]


def test_allowance_at_both_ends_of_every_tube(tiny_adapter, token_ids, monkeypatch):
    states = teacher_trajectory(tiny_adapter, token_ids, 2)
    reduced = reduce(
        extract_block(tiny_adapter, 0),
        Capacity(head_fraction=0.5, mlp_fraction=0.5),
        [states[0]],
    )
    chain = [(0, reduced)] + [(k, extract_block(tiny_adapter, k)) for k in (1, 2)]
    measured = []
    monkeypatch.setattr(
        fp_allowance, "fp_error", lambda g, xs: measured.append(1) or fp_error(g, xs)
    )
    allowance = chain_allowance(chain, lambda k: _batches(states, k))
    stitched = _batches(states, 0)
    for k, surrogate in chain:
        assert allowance[k].centre == fp_error(surrogate, _batches(states, k))
        assert allowance[k].stitched == fp_error(surrogate, stitched)
        stitched = [run_graph(surrogate.graph, surrogate.weights, b) for b in stitched]
    # the reduced first block moves the stitched inputs off the teacher's: every later end is
    # measured; the first block's stitched input is the teacher's own
    assert len(measured) == 2 * len(chain) - 1


def test_stitched_end_on_the_teacher_path_is_the_centre(tiny_adapter, token_ids, monkeypatch):
    """Full blocks: where the IR reproduces the teacher bit for bit (tiny_llama), the stitched
    inputs stay the teacher's and fp(s_k) is fp(h_k), measured once; elsewhere both ends are
    measured."""
    states = teacher_trajectory(tiny_adapter, token_ids, 2)
    chain = [(k, extract_block(tiny_adapter, k)) for k in range(tiny_adapter.num_blocks)]
    measured = []
    monkeypatch.setattr(
        fp_allowance, "fp_error", lambda g, xs: measured.append(1) or fp_error(g, xs)
    )
    allowance = chain_allowance(chain, lambda k: _batches(states, k))
    stitched, off_path = _batches(states, 0), 0
    for k, surrogate in chain:
        on_path = all(a.equal(b) for a, b in zip(stitched, _batches(states, k), strict=True))
        off_path += not on_path
        assert allowance[k].centre == fp_error(surrogate, _batches(states, k)) > 0
        assert allowance[k].stitched == fp_error(surrogate, stitched)
        stitched = [run_graph(surrogate.graph, surrogate.weights, b) for b in stitched]
    assert len(measured) == len(chain) + off_path
    assert off_path == 0 or tiny_adapter.teacher.model.config.model_type == "gpt2"
