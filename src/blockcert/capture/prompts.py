"""Prompts: fixed-length token windows cut from a corpus, split by prompt into train and
held-out; the pool's other windows, in the same shuffled order, are the fresh prompts a
verifier draws from (never trained on nor certified on).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from blockcert.capture.corpus import Corpus
from blockcert.errors import BlockCertError


@dataclass(frozen=True)
class PromptSplit:
    """train `[n_train, seq_len]` and heldout `[n_heldout, seq_len]` int64 token ids.

    recipe: what rebuilds this split (corpus key and arguments, sizes, seed, pool factor), as a
    certificate records it. rest: the pool's other windows `[n_rest, seq_len]` in the shuffled
    order: fresh prompts from the same pool, disjoint from train and held-out.
    """

    train: torch.Tensor
    heldout: torch.Tensor
    source: dict[str, str]
    recipe: dict = field(default_factory=dict)
    rest: torch.Tensor | None = None

    @property
    def seq_len(self) -> int:
        return self.heldout.shape[1]


def _prepends_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a").input_ids[:1] == [bos]


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of one free-form prompt, with BOS first exactly when corpus windows get it."""
    bos = [tokenizer.bos_token_id] if _prepends_bos(tokenizer) else []
    return bos + tokenizer(text, add_special_tokens=False).input_ids


def build_prompts(
    corpus: Corpus,
    tokenizer,
    seq_len: int,
    n_train: int,
    n_heldout: int,
    seed: int = 0,
    pool_factor: int = 8,
) -> PromptSplit:
    """Cut non-overlapping windows of `seq_len` tokens from the corpus and split them by prompt.

    Windows are drawn from a pool of up to `pool_factor` times the number needed, shuffled with
    `seed`, so that prompts come from across the corpus; held-out prompts never share tokens
    with training prompts. A tokenizer that prepends BOS gets BOS at the start of every window.
    """
    if seq_len < 2 or n_train < 1 or n_heldout < 1:
        raise BlockCertError("data.seq_len must be >= 2 and both prompt counts >= 1.")
    bos = [tokenizer.bos_token_id] if _prepends_bos(tokenizer) else []
    body = seq_len - len(bos)
    needed = n_train + n_heldout
    windows: list[list[int]] = []
    for text in corpus.documents():
        ids = tokenizer(text, add_special_tokens=False).input_ids
        windows.extend(bos + ids[i : i + body] for i in range(0, len(ids) - body + 1, body))
        if len(windows) >= pool_factor * needed:
            break
    if len(windows) < needed:
        raise BlockCertError(
            f"the corpus gives {len(windows)} prompts of {seq_len} tokens but {needed} are needed "
            "(train + held-out); use a larger corpus or fewer / shorter prompts."
        )
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = torch.tensor([windows[i] for i in order[:needed]], dtype=torch.int64)
    rest = torch.tensor([windows[i] for i in order[needed:]], dtype=torch.int64)
    rest = rest.reshape(len(windows) - needed, seq_len)
    recipe = {
        "corpus": corpus.recipe(),
        "seq_len": seq_len,
        "n_train_prompts": n_train,
        "n_heldout_prompts": n_heldout,
        "seed": seed,
        "pool_factor": pool_factor,
    }
    return PromptSplit(
        train=chosen[n_heldout:],
        heldout=chosen[:n_heldout],
        source=corpus.describe(),
        recipe=recipe,
        rest=rest,
    )
