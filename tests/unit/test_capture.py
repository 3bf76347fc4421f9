"""Prompts, streamed residual pairs and the shard cache."""

import pytest
import torch

from blockcert.capture.cache import CachedPairs, cache_dir, fill_cache, is_complete
from blockcert.capture.corpus import Corpus, ShakespeareCorpus, TextFileCorpus, strip_markdown
from blockcert.capture.prompts import build_prompts
from blockcert.capture.store import PairStore
from blockcert.capture.stream import ResidualPairStream, teacher_pass
from blockcert.errors import BlockCertError
from blockcert.hashing import documents_sha256, token_ids_sha256
from blockcert.models.load import byte_tokenizer


class ListCorpus(Corpus):
    def __init__(self, docs):
        self.docs = docs

    def documents(self):
        yield from self.docs

    def describe(self):
        return {"source": "test", "licence": "test"}

    def recipe(self):
        return {"name": "text", "sha256": documents_sha256(self.docs)}


def test_shakespeare_corpus_is_real_text():
    docs = list(ShakespeareCorpus().documents())
    assert len(docs) >= 37
    text = "\n".join(docs)
    assert "To be, or not to be" in text and "**" not in text
    assert sum(map(len, docs)) > 4_000_000


def test_strip_markdown_keeps_words():
    assert (
        strip_markdown("## ACT I\n**HAMLET**  \n_Enter Ghost_\n") == "ACT I\nHAMLET\nEnter Ghost\n"
    )


def test_prompts_split_by_prompt_and_deterministic():
    corpus = ListCorpus(["abcdefghij" * 50, "klmnopqrst" * 50])
    split = build_prompts(corpus, byte_tokenizer(), seq_len=16, n_train=20, n_heldout=8, seed=3)
    again = build_prompts(corpus, byte_tokenizer(), seq_len=16, n_train=20, n_heldout=8, seed=3)
    assert split.train.shape == (20, 16) and split.heldout.shape == (8, 16)
    assert torch.equal(split.train, again.train) and torch.equal(split.heldout, again.heldout)
    other = build_prompts(corpus, byte_tokenizer(), seq_len=16, n_train=20, n_heldout=8, seed=4)
    assert token_ids_sha256(other.heldout) != token_ids_sha256(split.heldout)


def test_empty_corpus_is_a_clear_error(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(BlockCertError, match="gives 0 prompts"):
        build_prompts(TextFileCorpus(str(tmp_path)), byte_tokenizer(), 16, 4, 2)


def test_stream_yields_teacher_pairs(tiny_llama, token_ids):
    stream = ResidualPairStream(tiny_llama, 1, token_ids, batch_size=2)
    batches = list(stream)
    assert len(batches) == len(stream) == 2
    x_in = torch.cat([b[0] for b in batches])
    x_out = torch.cat([b[1] for b in batches])
    ref_in, ref_out = tiny_llama.block_pair(token_ids, 1)
    assert torch.equal(x_in, ref_in) and torch.equal(x_out, ref_out)
    assert x_in.dtype == torch.float32


def test_stream_rejects_out_of_range_block(tiny_llama, token_ids):
    with pytest.raises(BlockCertError, match="out of range"):
        ResidualPairStream(tiny_llama, 99, token_ids, 2)


def test_stream_rejects_non_finite_activations(tiny_llama, token_ids):
    embed = tiny_llama.teacher.model.model.embed_tokens.weight
    saved = embed[5].clone()
    with torch.no_grad():
        embed[5] = float("nan")
    try:
        ids = token_ids.clone()
        ids[0, 0] = 5
        with pytest.raises(BlockCertError, match="NaN/Inf"):
            list(ResidualPairStream(tiny_llama, 0, ids, 2))
    finally:
        with torch.no_grad():
            embed[5] = saved


def test_cache_roundtrip(tiny_llama, token_ids, tmp_path):
    directory = cache_dir(tmp_path, "m" * 64, token_ids_sha256(token_ids), 1)
    assert not is_complete(directory)
    fill_cache(directory, ResidualPairStream(tiny_llama, 1, token_ids, 2), {"block": 1})
    assert is_complete(directory)
    cached = list(CachedPairs(directory, batch_size=2))
    ref_in, ref_out = tiny_llama.block_pair(token_ids, 1)
    assert torch.equal(torch.cat([b[0] for b in cached]), ref_in)
    assert torch.equal(torch.cat([b[1] for b in cached]), ref_out)
    shuffled = list(CachedPairs(directory, batch_size=2, shuffle=True))
    assert sum(len(b[0]) for b in shuffled) == len(token_ids)


def test_one_pass_yields_every_block_bitwise_as_a_single_block_capture(tiny_adapter, token_ids):
    seen = {}
    for index, k, x_in, x_out in teacher_pass(tiny_adapter, token_ids, 2, [3, 1]):
        seen.setdefault(k, []).append((index, x_in, x_out))
    assert sorted(seen) == [1, 3]
    for k, batches in seen.items():
        assert [i for i, _, _ in batches] == [0, 1]
        ref_in, ref_out = tiny_adapter.block_pair(token_ids, k)
        assert torch.equal(torch.cat([b[1] for b in batches]), ref_in)
        assert torch.equal(torch.cat([b[2] for b in batches]), ref_out)


def test_store_captures_missing_blocks_only(tiny_llama, token_ids, tmp_path, monkeypatch):
    store = PairStore(tiny_llama, tmp_path, batch_size=2)
    store.capture([0, 2], "heldout", token_ids)
    assert store.teacher_prompts == len(token_ids)
    assert store.sources[(2, "heldout")].startswith("teacher -> cache:")
    # a new store (another process) over blocks 0..3: one pass, for blocks 1 and 3 only
    again = PairStore(tiny_llama, tmp_path, batch_size=2)
    ran = []
    monkeypatch.setattr(
        "blockcert.capture.store.teacher_pass",
        lambda adapter, ids, bs, blocks: (
            ran.append(blocks) or teacher_pass(adapter, ids, bs, blocks)
        ),
    )
    again.capture([0, 1, 2, 3], "heldout", token_ids)
    assert ran == [[1, 3]] and again.teacher_prompts == len(token_ids)
    assert again.sources[(0, "heldout")] == f"cache:{again.directory(0, token_ids)}"
    again.capture([0, 1, 2, 3], "heldout", token_ids)
    assert ran == [[1, 3]]
    cached = list(again.dataset(3, "heldout", token_ids))
    ref_in, ref_out = tiny_llama.block_pair(token_ids, 3)
    assert torch.equal(torch.cat([b[0] for b in cached]), ref_in)
    assert torch.equal(torch.cat([b[1] for b in cached]), ref_out)
    off = PairStore(tiny_llama, tmp_path / "off", batch_size=2, enabled=False)
    assert isinstance(off.dataset(1, "train", token_ids), ResidualPairStream)
    assert off.sources[(1, "train")] == "teacher (streamed, not cached)"
    assert not (tmp_path / "off").exists()
