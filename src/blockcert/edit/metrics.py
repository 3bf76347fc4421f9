"""Editing-paper metrics (ROME §3.2, CounterFact): efficacy, generalisation, specificity.

For a query p with target o* = (o*_1..o*_n): prob = P(o* | p) = prod_j P(o*_j | p, o*_<j)
(teacher forcing), rank = 1 + #{tokens scored above o*_1 at p's last position}, and top1 = every
o*_j is the arg-max at its position (greedy decoding writes o*). Efficacy scores the edit
prompt, generalisation its paraphrases, specificity (neighbourhood) other subjects' prompts,
whose original top-1 should stay. Locality on unrelated held-out text compares the edited and
original next-token distributions at every position: mean KL(original || edited) in nats,
top-1 agreement and perplexity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from blockcert.edit.facts import Query, pad_right
from blockcert.edit.forward import block_input, tail_logits
from blockcert.edit.value import target_log_probs
from blockcert.models.adapters import BlockAdapter

BlockFn = Callable[[torch.Tensor], torch.Tensor]  # h_k [b, s, d] -> h_{k+1} [b, s, d]


@dataclass(frozen=True)
class QueryScore:
    prob: float
    rank: int
    top1: bool
    top_token: int

    def to_dict(self) -> dict:
        return asdict(self)


def score_queries(logits: torch.Tensor, queries: Sequence[Query]) -> list[QueryScore]:
    scores = []
    for i, (q, logp) in enumerate(zip(queries, target_log_probs(logits, queries), strict=True)):
        rows = logits[i, q.answer_pos : q.answer_pos + len(q.target)]
        first = rows[0]
        rank = 1 + int((first > first[q.target[0]]).sum())
        top1 = bool((rows.argmax(-1) == torch.tensor(q.target)).all())
        scores.append(QueryScore(math.exp(float(logp.sum())), rank, top1, int(first.argmax())))
    return scores


class Probe:
    """Queries whose block-k inputs h_k are computed once; scores any g_k: h_k -> h_{k+1}."""

    def __init__(self, adapter: BlockAdapter, k: int, queries: Sequence[Query]):
        self.adapter, self.k, self.queries = adapter, k, list(queries)
        self.h_in = block_input(adapter, pad_right(self.queries), k) if self.queries else None

    @torch.no_grad()
    def scores(self, block: BlockFn) -> list[QueryScore]:
        if not self.queries:
            return []
        logits = tail_logits(self.adapter, block(self.h_in), self.k + 1)
        return score_queries(logits, self.queries)


@dataclass(frozen=True)
class Locality:
    kl_mean: float
    top1_agreement: float
    ppl_before: float
    ppl_after: float
    n_positions: int

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def heldout_locality(
    adapter: BlockAdapter,
    k: int,
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]],
    token_ids: torch.Tensor,
    block: BlockFn,
) -> Locality:
    """Original (h_{k+1} = x_out) vs edited (h_{k+1} = block(x_in)) model on held-out pairs
    `(x_in, x_out)` in the row order of `token_ids` `[n, seq]`."""
    kl = nll_before = nll_after = 0.0
    agree = count = row = 0
    for x_in, x_out in pairs:
        ids = token_ids[row : row + len(x_in)]
        row += len(x_in)
        before = F.log_softmax(tail_logits(adapter, x_out, k + 1)[:, :-1].double(), -1)
        after = F.log_softmax(tail_logits(adapter, block(x_in), k + 1)[:, :-1].double(), -1)
        nxt = ids[:, 1:, None]
        kl += float((before.exp() * (before - after)).sum(-1).sum())
        agree += int((before.argmax(-1) == after.argmax(-1)).sum())
        nll_before -= float(before.gather(-1, nxt).sum())
        nll_after -= float(after.gather(-1, nxt).sum())
        count += nxt.numel()
    return Locality(
        kl / count, agree / count, math.exp(nll_before / count), math.exp(nll_after / count), count
    )
