"""Local re-certification: certify the edit's run directory as certify.py would.

Only the edited block has a certificate there, so certify.py composes the global bound
B_L = sum_k eps_k prod_{j>k} L_j with eps_j = 0 for every other (teacher) block and reports the
stitched (= edited) model's observed drift, perplexity, KL and top-1 on the held-out prompts.
"""

from __future__ import annotations

import time
from pathlib import Path

from blockcert.errors import BlockCertError
from blockcert.resources import compose_config


def certify_edit(run_dir: Path, model_args: list[str], extra: list[str]) -> tuple[dict, float]:
    """(certify's report of the edit's run directory, seconds), in this process with the
    certify config shipped in the package; certify's own errors (exit 2, 3 or 4) propagate."""
    from blockcert.certify import certify

    out = run_dir / "certify"
    started = time.perf_counter()
    cfg = compose_config("certify", [*model_args, f"runs={run_dir}", f"out={out}", *extra])
    result = certify(cfg)
    report = result.report
    if not report.get("files"):
        raise BlockCertError(f"certify wrote no report in {out}.")
    return {**report, "path": report["files"][0]}, time.perf_counter() - started


def certified_figures(report: dict, block: int, seconds: float) -> dict:
    """The figures of certify.py's report that sit beside the editing metrics."""
    bound, stitched = report["bound"], report["stitched"]
    row = next((b for b in report["blocks"] if b["block"] == block), {})
    return {
        "report": report["path"],
        "bound_kind": bound["kind"],
        "global_bound": bound["claimed"],
        "observed_drift": stitched["observed_final_max"],
        "bound_over_observed": bound["tightness"],
        "eps_composed": row.get("eps"),
        "kl_mean": stitched["kl_mean"],
        "top1_agreement": stitched["top1_agreement"],
        "ppl_baseline": stitched["ppl_baseline"],
        "ppl_stitched": stitched["ppl_stitched"],
        "lean": report["lean"]["status"],
        "seconds": seconds,
    }
