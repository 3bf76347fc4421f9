"""Pareto front of surrogate size vs certified error over the certificates of a sweep.

python -m blockcert.pareto RUNS_ROOT [--out DIR] [--block K]: reads every certificate under
RUNS_ROOT (hash-checked), writes pareto.md and pareto.png into --out (default RUNS_ROOT) and
logs them to W&B (offline unless WANDB_MODE says otherwise). Compressed runs under RUNS_ROOT
(train.py compress=...) add the whole-model front beside the per-block one: pareto_model.md
and a second row of pareto.png (blockcert.compress.front).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from blockcert.atomic import write_atomic, write_text_atomic
from blockcert.cert.certificate import CERTIFICATE_FILE
from blockcert.cli import one_line_errors
from blockcert.compress.front import collect_model_points, lower_front, model_table, plot_model
from blockcert.errors import BlockCertError
from blockcert.tracking import coverage_key, log_files
from blockcert.verify.collect import load_certificate


@dataclass(frozen=True)
class Point:
    run: str
    block: int
    params: int
    teacher_params: int
    eps_max: float
    rel_mean: float
    coverage: dict[str, float]  # "abs/prompt<=1" -> fraction
    capacity: dict

    @property
    def params_fraction(self) -> float:
        return self.params / self.teacher_params


def collect_points(root: Path, block: int | None = None) -> list[Point]:
    points = []
    for path in sorted(Path(root).rglob(CERTIFICATE_FILE)):
        cert = load_certificate(path)
        if block is not None and cert["block"] != block:
            continue
        metrics = cert["metrics"]
        coverage = {coverage_key(c): c["fraction"] for c in metrics["coverage"]}
        points.append(
            Point(
                run=str(path.parent),
                block=cert["block"],
                params=cert["surrogate"]["params"],
                teacher_params=cert["surrogate"]["teacher_params"],
                eps_max=metrics["eps_max"],
                rel_mean=metrics["rel_mean"],
                coverage=coverage,
                capacity=cert["surrogate"]["capacity"],
            )
        )
    if not points:
        raise BlockCertError(f"no certificates under {root}; run a sweep first.")
    return points


def pareto_front(points: list[Point]) -> list[Point]:
    """Points not dominated in (fewer params, lower eps_max), sorted by params."""
    return lower_front(points, lambda p: p.params, lambda p: p.eps_max)


def markdown_table(points: list[Point]) -> str:
    front = {id(p) for p in pareto_front(points)}
    taus = list(points[0].coverage)
    header = [
        "block",
        "params kept",
        "heads",
        "mlp width",
        "rank",
        "eps_max",
        "rel mean",
        *[f"cov {t}" for t in taus],
        "front",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p in sorted(points, key=lambda p: (p.block, p.params)):
        cells = [
            str(p.block),
            f"{p.params_fraction:.1%}",
            str(p.capacity.get("heads")),
            str(p.capacity.get("mlp_width")),
            str(p.capacity.get("rank")),
            f"{p.eps_max:.4g}",
            f"{p.rel_mean:.3%}",
            *[f"{p.coverage.get(t, float('nan')):.2%}" for t in taus],
            "yes" if id(p) in front else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(points: list[Point], path: Path, model_points: list | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    taus = list(points[0].coverage)
    rows = 2 if model_points else 1
    fig, grid = plt.subplots(rows, 2, figsize=(11, 4 * rows), squeeze=False)
    axes = grid[0]
    if model_points:
        plot_model(grid[1], model_points)
    x = [p.params_fraction for p in points]
    axes[0].scatter(x, [p.eps_max for p in points], label="runs")
    front = pareto_front(points)
    axes[0].plot(
        [p.params_fraction for p in front], [p.eps_max for p in front], "r-o", label="Pareto front"
    )
    axes[0].set_xlabel("params kept (fraction of teacher block)")
    axes[0].set_ylabel("eps_max")
    axes[0].legend()
    for tau in taus:
        axes[1].scatter(x, [p.coverage[tau] for p in points], label=f"coverage {tau}")
    axes[1].set_xlabel("params kept (fraction of teacher block)")
    axes[1].set_ylabel("coverage")
    axes[1].legend(fontsize=7)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def log_to_wandb(files: list[Path], points: list[Point]) -> None:
    rows = [[p.block, p.params_fraction, p.eps_max, p.rel_mean] for p in points]
    columns = ["block", "params_fraction", "eps_max", "rel_mean"]
    log_files("pareto", "pareto", files, tables={"pareto": (columns, rows)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blockcert.pareto", description=__doc__)
    parser.add_argument("root", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--block", type=int, default=None)
    parser.add_argument("--no-wandb", action="store_true")
    args = parser.parse_args(argv)
    with one_line_errors():
        points = collect_points(args.root, args.block)
        model_points = collect_model_points(args.root)
        out = args.out or args.root
        table = markdown_table(points)
        files = [write_text_atomic(out / "pareto.md", table)]
        if model_points:
            table += "\nwhole model:\n\n" + model_table(model_points)
            files.append(write_text_atomic(out / "pareto_model.md", model_table(model_points)))
        files.append(plot(points, out / "pareto.png", model_points))
        if not args.no_wandb:
            log_to_wandb(files, points)
    print(table)
    print(f"written: {', '.join(str(f) for f in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
