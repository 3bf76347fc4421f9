"""The whole-model Pareto front: compressed runs' stitched figures against parameters kept.

A compressed run (train.py compress=...) leaves compress/summary.json beside its block<K>/
certificates. Each such run is one point: the parameters its surrogates keep (of the teacher
blocks they replace) against the stitched model's perplexity delta, KL(teacher || stitched)
and top-1 agreement on the held-out prompts. A point counts only if every block it names has a
certificate in the run whose (hash-checked) parameter count is the summary's; certify.py
re-measures the stitched figures from the certified surrogates.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from blockcert.cert.certificate import CERTIFICATE_FILE
from blockcert.errors import BlockCertError
from blockcert.verify.collect import load_certificate

SUMMARY = Path("compress") / "summary.json"


@dataclass(frozen=True)
class ModelPoint:
    run: str
    params_fraction: float
    ppl_delta: float
    kl: float
    top1: float
    eps_max: float
    n_blocks: int
    budget: str


def _budget(recipe: dict | None) -> str:
    budget = (recipe or {}).get("budget", {})
    shown = [f"{k}={v:g}" for k, v in budget.items() if v is not None and v != 1.0]
    return ", ".join(shown) or "?"


def collect_model_points(root: str | Path) -> list[ModelPoint]:
    """Every compressed run under `root` whose certificates back its summary."""
    points = []
    for summary_path in sorted(Path(root).rglob(str(SUMMARY))):
        run = summary_path.parent.parent
        summary = json.loads(summary_path.read_text())
        certificates = [load_certificate(p) for p in sorted(run.glob(f"block*/{CERTIFICATE_FILE}"))]
        params = sum(c["surrogate"]["params"] for c in certificates)
        if not certificates or params != summary["params"]["params"]:
            raise BlockCertError(
                f"{run}: its certificates keep {params} parameters but compress/summary.json "
                f"says {summary['params']['params']}; certify the run again (train.py resumes)."
            )
        recipe_path = run / "compress" / "recipe.json"
        recipe = json.loads(recipe_path.read_text()) if recipe_path.is_file() else {}
        held = summary["heldout"]
        points.append(
            ModelPoint(
                run=str(run),
                params_fraction=summary["params"]["fraction"],
                ppl_delta=held["ppl_delta"],
                kl=held["kl_mean"],
                top1=held["top1_agreement"],
                eps_max=held["eps_max"],
                n_blocks=len(certificates),
                budget=_budget(recipe.get("compress")),
            )
        )
    return points


def lower_front(points: list, cost: Callable, loss: Callable) -> list:
    """Points not dominated in (lower cost, lower loss), sorted by cost: the per-block front
    (params, eps_max) and the whole-model one (params kept, KL) alike."""
    front, best = [], float("inf")
    for point in sorted(points, key=lambda p: (cost(p), loss(p))):
        if loss(point) < best:
            front.append(point)
            best = loss(point)
    return front


def model_front(points: list[ModelPoint]) -> list[ModelPoint]:
    """Points not dominated in (fewer params, lower KL), sorted by params."""
    return lower_front(points, lambda p: p.params_fraction, lambda p: p.kl)


def model_table(points: list[ModelPoint]) -> str:
    front = {id(p) for p in model_front(points)}
    lines = [
        "| params kept | budget | blocks | ppl Δ | KL (nats) | top-1 | max ε | front | run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in sorted(points, key=lambda p: p.params_fraction, reverse=True):
        lines.append(
            f"| {p.params_fraction:.1%} | {p.budget} | {p.n_blocks} | {p.ppl_delta:+.3f} | "
            f"{p.kl:.4f} | {p.top1:.2%} | {p.eps_max:.4g} | {'yes' if id(p) in front else ''} | "
            f"{p.run} |"
        )
    return "\n".join(lines) + "\n"


def plot_model(axes, points: list[ModelPoint]) -> None:
    """Two panels: ppl delta and KL vs params kept; top-1 agreement vs params kept."""
    ordered = sorted(points, key=lambda p: p.params_fraction)
    x = [p.params_fraction for p in ordered]
    axes[0].plot(x, [p.ppl_delta for p in ordered], "o-", label="ppl delta")
    axes[0].set_xlabel("params kept (fraction of the teacher blocks)")
    axes[0].set_ylabel("stitched ppl delta (held-out)")
    twin = axes[0].twinx()
    twin.plot(x, [p.kl for p in ordered], "s--", color="tab:red", label="KL")
    twin.set_ylabel("KL(teacher || stitched), nats")
    axes[0].set_title("whole model (each point a certified run)")
    axes[1].plot(x, [p.top1 for p in ordered], "o-", color="tab:green")
    axes[1].set_xlabel("params kept (fraction of the teacher blocks)")
    axes[1].set_ylabel("top-1 agreement (held-out)")
