"""The verifier's prompt sets: sources, errors, stress set, check split, ragged evaluation."""

import dataclasses
import json
import logging

import pytest
import torch

from blockcert.capture.corpus import ShakespeareCorpus
from blockcert.capture.prompts import build_prompts
from blockcert.errors import BlockCertError
from blockcert.evaluate import trajectory
from blockcert.evaluate.prompt_sets import (
    STRESS_FILE,
    context_length,
    load_prompt_set,
    stress_descriptions,
)
from blockcert.evaluate.trajectory import evaluate_prompts, ragged_teacher_trajectory
from blockcert.models.load import byte_tokenizer
from blockcert.surrogate.extract import extract_block
from tests.conftest import REPO

CATEGORIES = {"repetition", "char_runs", "code", "json", "numbers", "non_latin", "short"}


def _bytes(text: str) -> list[int]:
    """Reference: one id per UTF-8 byte (the byte tokenizer does not prepend BOS)."""
    ids = byte_tokenizer()(text, add_special_tokens=False).input_ids
    assert len(ids) == len(text.encode())
    return ids


def test_text_json_and_directory_sources(tmp_path):
    tok = byte_tokenizer()
    (tmp_path / "lines.txt").write_text("first prompt\n\n  \nsecond, longer prompt\n")
    (tmp_path / "list.json").write_text(json.dumps(["a", "multi\nline", ""]))
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "b.txt").write_text("two\nlines")
    (folder / "a.txt").write_text("one")
    lines = load_prompt_set(str(tmp_path / "lines.txt"), tok, None)
    assert [p.tolist() for p in lines.ids] == [
        _bytes("first prompt"),
        _bytes("second, longer prompt"),
    ]
    assert lines.labels == ["lines.txt:1", "lines.txt:4"]
    listed = load_prompt_set(str(tmp_path / "list.json"), tok, None)
    assert [p.tolist() for p in listed.ids] == [_bytes("a"), _bytes("multi\nline")]
    folder_set = load_prompt_set(str(folder), tok, None)
    assert [p.tolist() for p in folder_set.ids] == [_bytes("one"), _bytes("two\nlines")]
    assert lines.sha256 != listed.sha256


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.txt", b"", "no prompts"),
        ("blank.txt", b"\n  \n", "no prompts"),
        ("latin1.txt", "caf\u00e9".encode("latin-1"), "not UTF-8"),
        ("bad.json", b"{not json", "invalid JSON"),
        ("dict.json", b'{"a": 1}', "list of strings"),
    ],
)
def test_bad_prompt_files_are_one_line_errors(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(BlockCertError, match=message) as err:
        load_prompt_set(str(tmp_path / name), byte_tokenizer(), None)
    assert err.value.exit_code == 2 and "\n" not in str(err.value)


def test_long_prompt_is_cut_with_a_warning(tmp_path, caplog):
    (tmp_path / "p.txt").write_text("x" * 50 + "\nshort\n")
    with caplog.at_level(logging.WARNING):
        prompts = load_prompt_set(str(tmp_path / "p.txt"), byte_tokenizer(), 16)
    assert [len(p) for p in prompts.ids] == [16, 5] and prompts.n_truncated == 1
    assert "cut to 16" in caplog.text


def test_stress_set_categories_and_chat_template(tiny_llama):
    tok = byte_tokenizer()
    plain = load_prompt_set("stress", tok, context_length(tiny_llama.config))
    assert set(plain.labels) == CATEGORIES  # no chat template on the byte tokenizer
    assert min(len(p) for p in plain.ids) <= 2 and max(len(p) for p in plain.ids) == 256
    assert len({len(p) for p in plain.ids}) > 10  # genuinely ragged
    tok.chat_template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
    chat = load_prompt_set("stress", tok, None)
    chats = [p for p, label in zip(chat.ids, chat.labels, strict=True) if label == "chat"]
    assert "<|user|>" in tok.decode(chats[0])
    assert set(stress_descriptions()) == CATEGORIES | {"chat"}


def test_stress_file_is_package_data():
    pyproject = (REPO / "pyproject.toml").read_text()
    section = pyproject.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    assert f'"evaluate/{STRESS_FILE}"' in section
    assert (REPO / "src" / "blockcert" / "evaluate" / STRESS_FILE).is_file()


def test_the_rest_of_the_pool_is_disjoint_from_train_and_heldout():
    tok, corpus = byte_tokenizer(), ShakespeareCorpus()
    split = build_prompts(corpus, tok, seq_len=24, n_train=10, n_heldout=6, seed=1)
    again = build_prompts(corpus, tok, seq_len=24, n_train=10, n_heldout=6, seed=1)
    assert torch.equal(split.rest, again.rest) and split.rest.shape[1] == 24
    assert len(split.rest) + 16 >= 8 * 16  # the pool holds pool_factor x (train + held-out)
    seen = {tuple(r) for r in torch.cat([split.train, split.heldout]).tolist()}
    assert not seen & {tuple(r) for r in split.rest.tolist()}
    assert split.recipe["pool_factor"] == 8 and split.recipe["corpus"] == {"name": "shakespeare"}


def _perturbed(adapter, k, scale=0.05):
    surrogate = extract_block(adapter, k)
    g = torch.Generator().manual_seed(k)
    weights = {
        n: w + scale * w.std() * torch.randn(w.shape, generator=g)
        for n, w in surrogate.weights.items()
    }
    return dataclasses.replace(surrogate, weights=weights)


def test_ragged_prompts_match_each_prompt_alone(tiny_llama):
    teacher = tiny_llama.teacher

    texts = ["a", "Hi!", "to be or not", "to be or not", "the " * 9, "{'x': [1, 2]}", "zz"]
    prompts = [torch.tensor(_bytes(t)) for t in texts]
    surrogates = {1: _perturbed(tiny_llama, 1), 2: _perturbed(tiny_llama, 2)}
    taus = {1: 0.01, 2: 0.01}
    together = evaluate_prompts(
        tiny_llama, surrogates, prompts, ragged_teacher_trajectory(tiny_llama, prompts, 3), taus
    )
    for i, p in enumerate(prompts):
        alone = evaluate_prompts(
            tiny_llama, surrogates, [p], ragged_teacher_trajectory(tiny_llama, [p], 3), taus
        )
        for name in ("deviation", "nll_baseline", "nll_stitched", "kl", "agree", "n_targets"):
            torch.testing.assert_close(
                getattr(together, name)[i], getattr(alone, name)[0], rtol=1e-5, atol=1e-6
            )
        for k in surrogates:
            torch.testing.assert_close(together.eps[k][i], alone.eps[k][0], rtol=1e-5, atol=1e-7)
            assert together.covered[k][i] == alone.covered[k][0]
        # independent reference: the HF model's own forward pass gives the baseline NLL
        with torch.no_grad():
            logits = teacher.model(p[None]).logits.double()
        nll = torch.nn.functional.cross_entropy(logits[0, :-1], p[1:], reduction="sum")
        torch.testing.assert_close(together.nll_baseline[i], nll, rtol=1e-4, atol=1e-4)
    assert together.n_targets.tolist() == [len(p) - 1 for p in prompts]
    assert together.final_deviation.max() > 0  # the surrogates really differ from the teacher


def test_prompt_evaluation_skips_blocks_that_reproduce_the_teacher(tiny_llama, monkeypatch):
    """Block 0 (the teacher's) and block 1 (its full IR, exact on tiny_llama) are not run again
    in the stitched pass; every figure equals the run without the shortcut."""
    prompts = [torch.tensor(_bytes(t)) for t in ("to be or not", "to be or not", "the " * 5)]
    surrogates = {1: extract_block(tiny_llama, 1), 2: _perturbed(tiny_llama, 2)}
    taus = {1: 0.01, 2: 0.01}
    trajectory_ = ragged_teacher_trajectory(tiny_llama, prompts, 2)
    stitched_batch = trajectory.stitched_batch
    with monkeypatch.context() as patch:  # the reference: every block run
        patch.setattr(trajectory, "stitched_batch", lambda *a: stitched_batch(*a[:4]))
        patch.setattr(trajectory, "trajectory_is_exact", lambda adapter: False)
        plain = evaluate_prompts(tiny_llama, surrogates, prompts, trajectory_, taus)
    ran, block = [], tiny_llama.block
    monkeypatch.setattr(tiny_llama, "block", lambda k, h: ran.append(k) or block(k, h))
    fast = evaluate_prompts(tiny_llama, surrogates, prompts, trajectory_, taus)
    assert ran == [3] * len(trajectory_.batches)  # only the block after the perturbed one
    for name in ("deviation", "nll_baseline", "nll_stitched", "kl", "agree", "n_targets"):
        assert torch.equal(getattr(fast, name), getattr(plain, name)), name
    assert all(torch.equal(fast.eps[k], plain.eps[k]) for k in surrogates)
    assert float(fast.eps[1].max()) == 0.0 < float(fast.eps[2].max())
