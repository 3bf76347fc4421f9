"""PromptSpec: what `conf/data/*.yaml` builds (`_target_`): a corpus and how to cut prompts."""

from __future__ import annotations

from dataclasses import dataclass

from blockcert.capture.corpus import Corpus
from blockcert.capture.prompts import PromptSplit, build_prompts


@dataclass(frozen=True)
class PromptSpec:
    """`n_train_prompts` + `n_heldout_prompts` windows of `seq_len` tokens from `corpus`.

    batch_size: prompts per teacher / training batch; seed: which windows are drawn.
    """

    corpus: Corpus
    seq_len: int = 128
    n_train_prompts: int = 512
    n_heldout_prompts: int = 96
    batch_size: int = 8
    seed: int = 0

    def build(self, tokenizer) -> PromptSplit:
        return build_prompts(
            self.corpus,
            tokenizer,
            seq_len=self.seq_len,
            n_train=self.n_train_prompts,
            n_heldout=self.n_heldout_prompts,
            seed=self.seed,
        )
