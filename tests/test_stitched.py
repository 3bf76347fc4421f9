"""The stitched transformers model against the stitched evaluation (tiny_llama)."""

import math

import pytest
import torch
import torch.nn.functional as F

from blockcert.errors import BlockCertError, VerificationError
from blockcert.evaluate.trajectory import _run_block, stitched_evaluation, teacher_trajectory
from blockcert.models.adapters import adapter_for
from blockcert.stitched import SurrogateLayer, load, stitch
from blockcert.surrogate.capacity import Capacity, reduce
from blockcert.surrogate.extract import extract_block
from blockcert.surrogate.transcoder import Transcoder
from tests.conftest import load_teacher, run_script


def _evaluation_logits(adapter, surrogates, ids):
    """Logits of the stitched evaluation's path: embed, g_k or f_k per block, head."""
    with torch.no_grad():
        h = adapter.embed(ids)
        for k in range(adapter.num_blocks):
            h = _run_block(adapter, surrogates, k, h)
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
    proc = run_script(
        "train.py",
        "model=tiny_llama",
        "block=2",
        "surrogate.full_capacity=true",
        "data.n_train_prompts=8",
        "data.n_heldout_prompts=4",
        "data.seq_len=16",
        "logger=csv",
        "callbacks.certificate.lipschitz_prompts=1",
        f"runs_root={tmp_path}",
        f"cache.root={tmp_path}/cache",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = tmp_path / "tiny_llama"
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
