"""Per-block error metrics on evaluated pairs, accumulated in fp32.

e_t = ||g(h)_t - f(h)_t||_2 for every token t of every evaluated prompt (first position
included). The surrogate's last projection, residual add and error reductions run in the fused
kernel (blockcert.kernels) when it is a full linear map, else on the materialised output.
Sums are accumulated in float64 over fp32 per-token errors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from blockcert.cert.coverage import Coverage
from blockcert.errors import BlockCertError
from blockcert.kernels.cert_reduce import ErrorStats, fused_projection_error, pair_error, use_triton
from blockcert.surrogate.interpret import run_graph, run_values
from blockcert.surrogate.ir import Surrogate
from blockcert.surrogate.view import BlockView, block_view


@dataclass
class ErrorReport:
    n_prompts: int
    n_tokens: int
    eps_max: float
    mean: float
    rms: float
    p50: float
    p99: float
    rel_max: float
    rel_mean: float
    rel_p99: float
    target_norm_mean: float
    coverage: list[Coverage]
    dtype: str = "float32"
    # [n_prompts] bool: the surrogate's output equals the teacher's on every token of the prompt
    # (None where the output was not materialised: the fused route); lets the stitched run skip
    # blocks whose input and output are the teacher's. Not a claim: never serialised.
    exact_prompts: torch.Tensor | None = field(default=None, repr=False, compare=False)
    # [n_prompts] fp32: each prompt's largest token error (the verifier's own-prompt test
    # compares them with fresh prompts'). Not a claim: never serialised.
    prompt_max: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        hidden = ("coverage", "exact_prompts", "prompt_max")
        data = {k: v for k, v in self.__dict__.items() if k not in hidden}
        data["coverage"] = [c.to_dict() for c in self.coverage]
        return data


def block_error_stats(
    surrogate: Surrogate, x_in: torch.Tensor, x_out: torch.Tensor, taus: list[float]
) -> tuple[ErrorStats, torch.Tensor | None]:
    """Fused error reductions of the surrogate on one batch `[b, s, d]` (per-token kept), and
    per prompt whether its output equals x_out exactly (None on the fused route: no output).

    out = y + P_down(hidden): where the Triton kernel runs (a GPU, or TRITON_INTERPRET=1) the last
    projection, the residual add and the reductions are fused when P_down is a full linear map
    and the block's last projection (BlockView.last_projection; not a skip transcoder's);
    otherwise the output is materialised by the graph (on CPU the fused reference would run the
    projection a second time, outside the graph: SmolLM2 block 12, 12 held-out batches of 1024
    tokens, 0.81 -> 0.73 s).
    """
    down = block_view(surrogate).last_projection if use_triton(x_in) else None
    if down is not None and not down.low_rank:
        values = run_values(
            surrogate.graph, surrogate.weights, x_in, (BlockView.HIDDEN, BlockView.MID)
        )
        hidden, residual = values[BlockView.HIDDEN], values[BlockView.MID]
        stats = fused_projection_error(
            hidden.reshape(-1, hidden.shape[-1]),
            down.weight,
            residual.reshape(-1, residual.shape[-1]),
            x_out.reshape(-1, x_out.shape[-1]),
            taus,
            bias=down.bias,
            return_per_token=True,
        )
        return stats, None
    pred = run_graph(surrogate.graph, surrogate.weights, x_in)
    stats = pair_error(
        pred.reshape(-1, pred.shape[-1]), x_out.reshape(-1, x_out.shape[-1]), taus, True
    )
    return stats, (pred == x_out).flatten(1).all(1)


def quantile(values: torch.Tensor, q: float) -> float:
    """The empirical q-quantile: the ceil(q n)-th smallest value (1-based), n = len(values).

    The one quantile rule of the project (certificates, validation metrics, verification).
    kthvalue is exact and, unlike torch.quantile, has no input-size limit.
    """
    n = len(values)
    k = max(1, min(n, math.ceil(q * n)))
    return float(values.kthvalue(k).values)


def coverage_entries(
    errors: torch.Tensor,
    rel_errors: torch.Tensor,
    taus_abs,
    taus_rel,
    delta: float,
    token_counts_abs: torch.Tensor | None = None,
) -> list[Coverage]:
    """Coverage at every tau, per token and per prompt; errors: `[n_prompts, seq]` fp32.

    A prompt is covered when its worst token is within tau. token_counts_abs: the fused
    kernel's per-tau token counts, used for the token-level abs entries when given.
    """
    entries = []
    for kind, values, taus in (("abs", errors, taus_abs), ("rel", rel_errors, taus_rel)):
        worst = values.amax(dim=1)
        for j, tau in enumerate(taus):
            tau = float(tau)
            fused = kind == "abs" and token_counts_abs is not None
            covered = int(token_counts_abs[j]) if fused else int((values <= tau).sum())
            entries.append(Coverage(kind, "token", tau, covered, values.numel(), delta))
            entries.append(
                Coverage(kind, "prompt", tau, int((worst <= tau).sum()), len(worst), delta)
            )
    return entries


@torch.no_grad()
def measure_errors(
    surrogate: Surrogate,
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]],
    taus_abs: list[float],
    taus_rel: list[float],
    delta: float,
) -> ErrorReport:
    """Error metrics of `surrogate` over `pairs` of (block input, teacher block output).

    Every token of every prompt counts (first position included); errors stay `[prompt, seq]`
    so that coverage can be stated per prompt, the i.i.d. unit.
    """
    errors, norms, exact, stats = [], [], [], None
    for x_in, x_out in pairs:
        batch, same = block_error_stats(surrogate, x_in.float(), x_out.float(), list(taus_abs))
        exact.append(same)
        if math.isnan(batch.max_error):
            raise BlockCertError("the surrogate produced NaN on evaluated tokens.")
        stats = batch if stats is None else stats.merge(batch)
        errors.append(batch.per_token_sq.sqrt().reshape(x_in.shape[0], x_in.shape[1]))
        norms.append(x_out.float().norm(dim=-1))
    if not errors:
        raise BlockCertError("no evaluated pairs: the held-out split is empty.")
    err, target_norm = torch.cat(errors), torch.cat(norms)
    rel_err = err / target_norm.clamp_min(1e-30)
    flat = err.flatten()
    return ErrorReport(
        n_prompts=err.shape[0],
        n_tokens=flat.numel(),
        eps_max=stats.max_error,
        mean=float(flat.double().mean()),
        rms=float(flat.double().pow(2).mean().sqrt()),
        p50=quantile(flat, 0.5),
        p99=quantile(flat, 0.99),
        rel_max=float(rel_err.max()),
        rel_mean=float(rel_err.double().mean()),
        rel_p99=quantile(rel_err.flatten(), 0.99),
        target_norm_mean=float(target_norm.double().mean()),
        coverage=coverage_entries(err, rel_err, taus_abs, taus_rel, delta, stats.counts),
        exact_prompts=None if any(e is None for e in exact) else torch.cat(exact),
        prompt_max=err.amax(dim=1),
    )
