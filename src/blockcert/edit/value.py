"""The value v* that makes the target likely: ROME's inner optimisation (Meng et al. 2022, §3.1
"Step 2", eq. 4), over a residual delta added at the edited block's output.

With W k the MLP output at the subject's last token, v* = W k* + delta where delta `[d]` solves
    min_delta (1/N) sum_i (1/|o*|) sum_j -log P(o*_j | x_i + p + o*_<j; h_{k+1}[key_i] += delta)
              + penalty * ||delta||^2 / rho^2,          ||delta|| <= clamp * rho,
over N contexts x_i (the bare prompt p and a few short text prefixes, ROME's "x_j + p"), by Adam
through the teacher's blocks k+1..L-1 and head (all frozen). rho = mean ||W k_i|| is the MLP
output norm at the subject (ROME's clamp_norm_factor is relative to it). Since
h_{k+1} = resid_attn + W k, adding delta to the MLP output is adding it to h_{k+1}. ROME's KL
"essence" term is replaced here by the norm penalty and by the certified drift budget, which
measure what unrelated text sees directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from blockcert.edit.facts import Query, pad_right
from blockcert.edit.forward import block_input, tail_logits
from blockcert.edit.keys import block_with_keys
from blockcert.models.adapters import BlockAdapter
from blockcert.progress import progress
from blockcert.surrogate.ir import Surrogate


@dataclass(frozen=True)
class ValueSettings:
    steps: int = 60
    lr: float = 0.01
    norm_penalty: float = 0.05
    clamp_norm: float = 4.0
    stop_nll: float = 0.05


@dataclass
class FactValue:
    """key: k* `[m]` (mean over contexts); delta: v* - W k* `[d]`; nll: final mean target NLL."""

    key: torch.Tensor
    delta: torch.Tensor
    nll: float
    steps: int
    rho: float


def target_log_probs(logits: torch.Tensor, queries: Sequence[Query]) -> list[torch.Tensor]:
    """Per query, log P(o*_j | ...) for every target token j (teacher forcing)."""
    out = []
    for i, q in enumerate(queries):
        rows = torch.arange(q.answer_pos, q.answer_pos + len(q.target))
        logp = F.log_softmax(logits[i, rows].double(), dim=-1)
        out.append(logp[torch.arange(len(q.target)), torch.tensor(q.target)])
    return out


def optimise_value(
    adapter: BlockAdapter,
    surrogate: Surrogate,
    k: int,
    queries: Sequence[Query],
    settings: ValueSettings,
) -> FactValue:
    """k* and delta for one fact from its rewriting queries (contexts + prompt + target[:-1])."""
    ids = pad_right(queries)
    h_in = block_input(adapter, ids, k)
    with torch.no_grad():
        h_out, keys = block_with_keys(surrogate, h_in)
        rows = torch.arange(len(queries))
        key_pos = torch.tensor([q.key_pos for q in queries])
        key_star = keys[rows, key_pos].double().mean(0)
        rho = float(h_out[rows, key_pos].norm(dim=-1).mean().clamp_min(1e-6))
    at_key = torch.zeros(h_out.shape[:2] + (1,))
    at_key[rows, key_pos] = 1.0
    unit = torch.zeros(h_out.shape[-1], requires_grad=True)  # delta = rho * unit
    optimiser = torch.optim.Adam([unit], lr=settings.lr)
    nll, steps = float("inf"), 0
    with torch.enable_grad():
        ascent = progress(range(1, settings.steps + 1), settings.steps, "value v*", "steps")
        for steps in ascent:  # noqa: B007 (the count is reported)
            logits = tail_logits(adapter, h_out + at_key * (rho * unit), k + 1)
            loss_nll = -torch.stack([lp.mean() for lp in target_log_probs(logits, queries)]).mean()
            nll = float(loss_nll.detach())
            if nll < settings.stop_nll:
                break
            loss = loss_nll + settings.norm_penalty * unit.pow(2).sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            with torch.no_grad():  # project onto the ball ||delta|| <= clamp * rho
                unit.mul_(min(1.0, settings.clamp_norm / max(float(unit.norm()), 1e-12)))
    delta = (rho * unit).detach().double()
    return FactValue(key_star, delta, nll, steps, rho)
