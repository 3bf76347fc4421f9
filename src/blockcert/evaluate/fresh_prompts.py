"""The verifier's fresh prompts: drawn, seeded and hashed before any of them is evaluated.

certify.py draws every prompt it states something about itself, never the certificate author:
from the recipe's window pool minus every training and held-out prompt (so that fresh prompts
and held-out prompts are draws from one pool), with a seed it draws (`verifier.seed`: null =
fresh from the operating system, recorded). One draw, three disjoint splits in this order:

    own          the verifier's own held-out prompts: eps_k per block against the certificate
                 (evaluate/own_split.py); they also fix the scales of the joint statement;
    calibration  the prompts the statement's threshold is an order statistic of;
    check        untouched until the statement is fixed; its observed miss rate validates it.

Every split is hashed when drawn (the report records the hashes and the seed), before the first
prompt is evaluated. Lengths: `fixed` keeps the recipe's seq_len; `mixed` cuts each calibration
and check prompt to a length drawn uniformly from [min_length, seq_len] (the statement then
covers that mixture; the own split keeps the held-out prompts' length it is compared with).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from blockcert.capture.corpus import ShakespeareCorpus, TextFileCorpus
from blockcert.capture.prompts import build_prompts
from blockcert.errors import BlockCertError
from blockcert.hashing import sha256_text, token_ids_sha256

BUILT_IN = "shakespeare"
SPLITS = ("own", "calibration", "check")


@dataclass(frozen=True)
class FreshDraw:
    """Prompts `[len_i]` int64 per split, and where they came from."""

    splits: dict[str, list[torch.Tensor]]
    corpus: str
    seed: int
    exchangeable: bool  # drawn from the recipe's own pool: exchangeable with held-out prompts
    pool: int  # windows the draw chose from
    lengths: str  # what prompt lengths the statements cover

    def sha256(self, split: str) -> str:
        """SHA-256 over the split's prompts in order (each hashed with its shape)."""
        return sha256_text("".join(token_ids_sha256(p) for p in self.splits[split]))

    def describe(self) -> dict:
        return {
            "corpus": self.corpus,
            "seed": self.seed,
            "exchangeable": self.exchangeable,
            "pool": self.pool,
            "lengths": self.lengths,
            "splits": {
                name: {"n_prompts": len(prompts), "sha256": self.sha256(name)}
                for name, prompts in self.splits.items()
            },
        }


def _windows(corpus: str, recipe: dict, pool: torch.Tensor, tokenizer, n: int):
    """(windows [m, seq], name, exchangeable) to draw n prompts from."""
    if corpus == BUILT_IN and recipe["corpus"]["name"] == BUILT_IN:
        return pool, f"{BUILT_IN} (the recipe's pool)", True
    source = ShakespeareCorpus() if corpus == BUILT_IN else TextFileCorpus(corpus)
    split = build_prompts(source, tokenizer, recipe["seq_len"], 1, n, seed=0)
    name = f"{BUILT_IN} (another corpus than the recipe's)" if corpus == BUILT_IN else corpus
    return torch.cat([split.heldout, split.train, split.rest]), name, False


def draw_fresh(
    options: Mapping,
    counts: Mapping[str, int],
    recipe: dict,
    pool: torch.Tensor,
    tokenizer,
    lengths: str = "fixed",
    min_length: int = 16,
) -> FreshDraw:
    """counts[split] prompts for each split of SPLITS, drawn without replacement.

    options: the `verifier` config (corpus, seed). pool: the recipe's windows that no composed
    certificate trains or evaluates on `[n_pool, seq_len]`.
    """
    seed = options["seed"]
    seed = secrets.randbits(63) if seed is None else int(seed)
    wanted = sum(counts[s] for s in SPLITS)
    windows, name, exchangeable = _windows(str(options["corpus"]), recipe, pool, tokenizer, wanted)
    if len(windows) < wanted:
        raise BlockCertError(
            f"the verifier's corpus pool holds {len(windows)} fresh prompts but {wanted} are "
            "needed (own + calibration + check); lower statistics.check_prompts or "
            "statistics.miss_rate's demands, or use a larger corpus."
        )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(windows), generator=generator)[:wanted]
    seq_len = windows.shape[1]
    if lengths == "fixed":
        cut = [seq_len] * wanted
        covered = f"{seq_len} tokens"
    elif lengths == "mixed":
        if not 2 <= min_length <= seq_len:
            raise BlockCertError(f"statistics.min_length={min_length} must be in [2, {seq_len}].")
        cut = torch.randint(min_length, seq_len + 1, (wanted,), generator=generator).tolist()
        covered = f"lengths uniform in [{min_length}, {seq_len}] tokens"
    else:
        raise BlockCertError(f"statistics.lengths={lengths!r}: use fixed or mixed.")
    cut[: counts["own"]] = [seq_len] * counts["own"]  # compared with held-out prompts as they are
    prompts = [windows[int(i)][:n] for i, n in zip(order, cut, strict=True)]
    splits, start = {}, 0
    for split in SPLITS:
        splits[split] = prompts[start : start + counts[split]]
        start += counts[split]
    return FreshDraw(splits, name, seed, exchangeable, len(windows), covered)
