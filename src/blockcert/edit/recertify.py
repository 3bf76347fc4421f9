"""Local re-certification: run certify.py on the edit's run directory as a user would.

Only the edited block has a certificate there, so certify.py composes the global bound
B_L = sum_k eps_k prod_{j>k} L_j with eps_j = 0 for every other (teacher) block and reports the
stitched (= edited) model's observed drift, perplexity, KL and top-1 on the held-out prompts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from blockcert.errors import BlockCertError, BoundViolationError, VerificationError

REPO = Path(__file__).resolve().parents[3]
_ERRORS = {3: VerificationError, 4: BoundViolationError}


def run_certify(run_dir: Path, model_args: list[str], extra: list[str]) -> tuple[dict, float]:
    """(certify_report.json with its path under "path", seconds); certify.py's own one-line
    error and exit code on failure."""
    out = run_dir / "certify"
    command = [
        sys.executable,
        str(REPO / "certify.py"),
        *model_args,
        f"runs={run_dir}",
        f"out={out}",
    ]
    started = time.perf_counter()
    proc = subprocess.run(command + list(extra), cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        reason = lines[-1].removeprefix("error: ") if lines else "no message"
        raise _ERRORS.get(proc.returncode, BlockCertError)(
            f"certify.py on {run_dir} exited {proc.returncode}: {reason}"
        )
    path = out / "certify_report.json"
    if not path.is_file():
        raise BlockCertError(f"certify.py wrote no report in {out}.")
    return {**json.loads(path.read_text()), "path": str(path)}, seconds


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
