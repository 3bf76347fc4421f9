"""The stitched transformers model against the stitched evaluation (tiny_llama)."""

import math

import pytest
import torch
import torch.nn.functional as F

from blockcert.cert.metrics import measure_errors
from blockcert.errors import BlockCertError, VerificationError
from blockcert.evaluate import trajectory
from blockcert.evaluate.trajectory import (
    run_block,
    stitched_evaluation,
    teacher_trajectory,
)
from blockcert.models.adapters import adapter_for
from blockcert.stitched import SurrogateLayer, load, stitch
from blockcert.surrogate.capacity import Capacity, reduce
from blockcert.surrogate.extract import extract_block
from blockcert.surrogate.transcoder import Transcoder
from tests.conftest import load_teacher
from tests.helpers import train_in_process


def _evaluation_logits(adapter, surrogates, ids):
    """Logits of the stitched evaluation's path: embed, g_k or f_k per block, head."""
    with torch.no_grad():
        h = adapter.embed(ids)
        for k in range(adapter.num_blocks):
            h = run_block(adapter, surrogates, k, h)
        return adapter.head(h)


@pytest.fixture(scope="module")
def stitched():
    """(stitched HF model, reference adapter, surrogates): block 1 a transcoder, block 2 pruned."""
    reference = adapter_for(load_teacher("tiny_llama"))
    ids = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(2))
    x1, _ = reference.block_pair(ids, 1)
    x2, _ = reference.block_pair(ids, 2)
    surrogates = {
        1: Transcoder(width=96, k=8).build(extract_block(reference, 1), [x1]),
        2: reduce(extract_block(reference, 2), Capacity(head_fraction=0.5, mlp_fraction=0.5), [x2]),
    }
    model = stitch(load_teacher("tiny_llama"), surrogates)  # a second, identical teacher
    return model, reference, surrogates


def test_layers_are_replaced(stitched):
    model, _, _ = stitched
    kinds = [type(layer).__name__ for layer in model.model.layers]
    assert kinds[1] == kinds[2] == "SurrogateLayer" and "SurrogateLayer" not in (kinds[0], kinds[3])
    assert model.config.use_cache is False and model.generation_config.use_cache is False


def test_hf_logits_equal_the_stitched_evaluation(stitched):
    model, reference, surrogates = stitched
    ids = torch.randint(0, 256, (3, 21), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    expected = _evaluation_logits(reference, surrogates, ids)
    assert torch.allclose(logits, expected, rtol=0, atol=1e-5), (logits - expected).abs().max()
    plain = _evaluation_logits(reference, {}, ids)
    assert (logits - plain).abs().max() > 1e-3  # the surrogates do change the model
    # and the perplexity stitched_evaluation reports is the HF model's
    states = teacher_trajectory(reference, ids, batch_size=2)
    result = stitched_evaluation(reference, surrogates, ids, states, batch_size=2)
    nll = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).double(), ids[:, 1:].reshape(-1)
    )
    assert math.exp(float(nll)) == pytest.approx(result.ppl_stitched, rel=1e-5)


def _figures(result):
    return (
        result.prompt_deviation.tolist(),
        result.final_token_deviation.tolist(),
        result.ppl_baseline,
        result.ppl_stitched,
        result.kl_mean,
        result.top1_agreement,
    )


def test_teacher_blocks_on_its_path_are_skipped_with_the_same_figures(stitched, monkeypatch):
    _, reference, surrogates = stitched
    ids = torch.randint(0, 256, (5, 12), generator=torch.Generator().manual_seed(8))
    states = teacher_trajectory(reference, ids, batch_size=2)
    assert trajectory.trajectory_is_exact(reference)  # tiny_llama runs in float32
    with monkeypatch.context() as patch:  # the references: every block run
        patch.setattr(trajectory, "trajectory_is_exact", lambda adapter: False)
        plain = stitched_evaluation(reference, surrogates, ids, states, batch_size=2)
        plain_alone = stitched_evaluation(reference, {}, ids, states, batch_size=2)
    ran, block = [], reference.block
    monkeypatch.setattr(reference, "block", lambda k, h: ran.append(k) or block(k, h))
    fast = stitched_evaluation(reference, surrogates, ids, states, batch_size=2)
    assert _figures(fast) == _figures(plain)
    assert ran == [3, 3, 3]  # block 0 is on the teacher's path; block 3 is after the surrogates
    # the teacher alone: nothing is run again, and the logits are the baseline's
    ran.clear()
    alone = stitched_evaluation(reference, {}, ids, states, batch_size=2)
    assert ran == [] and alone.ppl_stitched == alone.ppl_baseline and alone.kl_mean == 0.0
    assert _figures(alone) == _figures(plain_alone)


def test_surrogates_that_reproduce_their_block_are_skipped(stitched, monkeypatch):
    _, reference, _ = stitched
    ids = torch.randint(0, 256, (4, 12), generator=torch.Generator().manual_seed(9))
    states = teacher_trajectory(reference, ids, batch_size=2)
    full = {1: extract_block(reference, 1)}
    pairs = [(states[1][i : i + 2], states[2][i : i + 2]) for i in (0, 2)]
    report = measure_errors(full[1], pairs, [0.1], [0.1], 0.05)
    # a surrogate's exact prompts: its output equals the teacher's on every token
    out = torch.cat([run_block(reference, full, 1, x) for x, _ in pairs])
    assert report.exact_prompts.tolist() == [out[i].equal(states[2][i]) for i in range(4)]
    assert report.exact_prompts.all()  # the full block's IR reproduces HF's bit for bit here
    plain = stitched_evaluation(reference, full, ids, states, 2)
    exact = {1: report.exact_prompts}
    ran, run_graph = [], trajectory.run_graph
    monkeypatch.setattr(trajectory, "run_graph", lambda *a: ran.append(1) or run_graph(*a))
    fast = stitched_evaluation(reference, full, ids, states, batch_size=2, exact=exact)
    assert _figures(fast) == _figures(plain) and ran == []


def test_generate_equals_greedy_decoding_of_the_stitched_evaluation(stitched):
    model, reference, surrogates = stitched
    prompt = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(6))
    out = model.generate(input_ids=prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
    ids = prompt
    for _ in range(4):
        nxt = _evaluation_logits(reference, surrogates, ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    assert torch.equal(out, ids)


def test_cache_and_padding_are_refused(stitched):
    model, _, _ = stitched
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(7))
    with pytest.raises(BlockCertError, match="KV cache"):
        model(input_ids=ids, use_cache=True)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    with pytest.raises(BlockCertError):
        model(input_ids=ids, attention_mask=mask)


@pytest.mark.slow
def test_load_verifies_certificates(tmp_path):
    train_in_process(tmp_path, "block=2", "surrogate.full_capacity=true")
    runs = tmp_path / "run"
    model, tokenizer = load(runs, load_teacher("tiny_llama"))
    assert isinstance(model.model.layers[2], SurrogateLayer)
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(8))
    teacher = load_teacher("tiny_llama").model
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, teacher(input_ids=ids).logits, atol=1e-4)
    (weights,) = runs.rglob("surrogate.safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(VerificationError):
        load(runs, load_teacher("tiny_llama"))
