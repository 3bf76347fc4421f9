"""Block adapters run block k exactly as the HF model does."""

import pytest
import torch


def _check_every_block(adapter, input_ids, blocks):
    with torch.no_grad():
        out = adapter.teacher.model(input_ids, output_hidden_states=True)
    hidden = out.hidden_states
    last = adapter.num_blocks - 1
    assert torch.equal(adapter.embed(input_ids), hidden[0])
    for k in blocks:
        with torch.no_grad():
            y = adapter.block(k, hidden[k])
        if k < last:
            torch.testing.assert_close(y, hidden[k + 1], atol=1e-5, rtol=0)
        else:  # HF's last hidden state is after the final norm; compare logits instead
            with torch.no_grad():
                logits = adapter.head(y)
            torch.testing.assert_close(logits, out.logits, atol=1e-4, rtol=1e-5)


def test_tiny_adapters_match_hf_hidden_states(tiny_adapter, token_ids):
    _check_every_block(tiny_adapter, token_ids, range(tiny_adapter.num_blocks))


def test_block_pair_runs_only_the_prefix(tiny_llama, token_ids):
    with torch.no_grad():
        hidden = tiny_llama.teacher.model(token_ids, output_hidden_states=True).hidden_states
    x_in, x_out = tiny_llama.block_pair(token_ids, 2)
    torch.testing.assert_close(x_in, hidden[2], atol=1e-5, rtol=0)
    torch.testing.assert_close(x_out, hidden[3], atol=1e-5, rtol=0)


def test_smollm2_adapter_matches_hf(smollm2):
    ids = smollm2.teacher.tokenizer(
        "Now is the winter of our discontent made glorious summer", return_tensors="pt"
    ).input_ids
    assert smollm2.num_blocks == 30 and smollm2.d_model == 576
    _check_every_block(smollm2, ids, [0, 12, 29])


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_family_detected(name):
    from tests.conftest import load_teacher

    teacher = load_teacher(name)
    assert teacher.family == name.removeprefix("tiny_")
    assert len(teacher.weights_sha256) == 64
