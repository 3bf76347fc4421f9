"""Per-block error metrics on evaluated pairs, accumulated in fp32.

e_t = ||g(h)_t - f(h)_t||_2 for every token t of every evaluated prompt (first position
included). The surrogate's last projection, residual add and error reductions run in the fused
kernel (kernels.cert_reduce) when the last op is a linear map, else on the materialised output.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from blockcert.cert.coverage import Coverage
from blockcert.kernels import ErrorStats, fused_projection_error, pair_error
from blockcert.surrogate.interpret import run_graph
from blockcert.surrogate.ir import Surrogate


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

    def to_dict(self) -> dict:
        data = {k: v for k, v in self.__dict__.items() if k != "coverage"}
        data["coverage"] = [c.to_dict() for c in self.coverage]
        return data


def block_error_stats(
    surrogate: Surrogate, x_in: torch.Tensor, x_out: torch.Tensor, taus: list[float]
) -> ErrorStats:
    """Fused error reductions of the surrogate on one batch `[b, s, d]` (per-token kept)."""
    graph, weights = surrogate.graph, surrogate.weights
    last = graph.node(graph.output)
    projection = graph.node("mlp_out") if last.op == "add" else None
    if projection is not None and projection.op == "linear" and last.inputs[1] == "mlp_out":
        _, values = run_graph(graph, weights, x_in, keep=(projection.inputs[0], last.inputs[0]))
        hidden, residual = values[projection.inputs[0]], values[last.inputs[0]]
        bias = weights.get(projection.weights.get("bias", ""), None)
        return fused_projection_error(
            hidden.reshape(-1, hidden.shape[-1]),
            weights[projection.weights["weight"]],
            residual.reshape(-1, residual.shape[-1]),
            x_out.reshape(-1, x_out.shape[-1]),
            taus,
            bias=bias,
            return_per_token=True,
        )
    pred = run_graph(graph, weights, x_in)
    return pair_error(
        pred.reshape(-1, pred.shape[-1]), x_out.reshape(-1, x_out.shape[-1]), taus, True
    )


def _quantile(values: torch.Tensor, q: float) -> float:
    # torch.quantile refuses very large inputs; kthvalue is exact and has no size limit.
    k = max(1, min(len(values), int(torch.ceil(torch.tensor(q * len(values))).item())))
    return float(values.kthvalue(k).values)


@torch.no_grad()
def measure_errors(
    surrogate: Surrogate,
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]],
    taus_abs: list[float],
    taus_rel: list[float],
    delta: float,
) -> ErrorReport:
    """Error metrics of `surrogate` over `pairs` of (block input, teacher block output)."""
    errors, norms, n_prompts, stats = [], [], 0, None
    for x_in, x_out in pairs:
        batch = block_error_stats(surrogate, x_in.float(), x_out.float(), list(taus_abs))
        stats = batch if stats is None else stats.merge(batch)
        errors.append(batch.per_token_sq.sqrt())
        norms.append(x_out.float().reshape(-1, x_out.shape[-1]).norm(dim=-1))
        n_prompts += x_in.shape[0]
    if stats is None:
        raise ValueError("no evaluated pairs")
    err, target_norm = torch.cat(errors), torch.cat(norms)
    rel_err = err / target_norm.clamp_min(1e-30)
    n = stats.n
    coverage = [
        Coverage("abs", float(t), int(c), n, delta)
        for t, c in zip(taus_abs, stats.counts, strict=True)
    ]
    coverage += [Coverage("rel", float(t), int((rel_err <= t).sum()), n, delta) for t in taus_rel]
    return ErrorReport(
        n_prompts=n_prompts,
        n_tokens=n,
        eps_max=stats.max_error,
        mean=stats.sum_error / n,
        rms=(stats.sum_sq_error / n) ** 0.5,
        p50=_quantile(err, 0.5),
        p99=_quantile(err, 0.99),
        rel_max=float(rel_err.max()),
        rel_mean=float(rel_err.mean()),
        rel_p99=_quantile(rel_err, 0.99),
        target_norm_mean=float(target_norm.mean()),
        coverage=coverage,
    )
