"""Check a certificate against the artifacts it names, and reproduce its claims.

Hashes: teacher weights, surrogate IR JSON and weights, held-out token file and token ids.
Claims: eps_max and coverage counts recomputed from the IR with the reference interpreter on
teacher pairs of the certificate's own held-out tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from blockcert.capture.prompts import token_ids_sha256
from blockcert.cert.metrics import ErrorReport, measure_errors
from blockcert.errors import VerificationError
from blockcert.surrogate.ir import Surrogate, load_surrogate, sha256_file


@dataclass(frozen=True)
class Tolerance:
    """How closely a recomputation must reproduce the certificate's claims."""

    eps_rel: float = 1e-4
    eps_abs: float = 1e-6
    coverage_fraction: float = 1e-3

    def describe(self) -> str:
        return (
            f"eps_max within {self.eps_rel:g} relative + {self.eps_abs:g} absolute; coverage "
            f"counts within {self.coverage_fraction:g} of n"
        )


def _mismatch(path: Path, field: str, detail: str) -> VerificationError:
    return VerificationError(f"{path}: field {field} does not match: {detail}")


def verify_artifacts(
    path: Path, certificate: dict, model_sha256: str
) -> tuple[Surrogate, torch.Tensor]:
    """Check every hash a certificate names; return its surrogate and held-out token ids."""
    run_dir = path.parent
    if certificate["model"]["sha256"] != model_sha256:
        raise _mismatch(path, "model.sha256", "the teacher weights loaded now hash differently")
    for name, expected in certificate["surrogate"]["files"].items():
        file = run_dir / name
        if not file.is_file() or sha256_file(file) != expected:
            raise _mismatch(path, f"surrogate.files[{name}]", f"{file} is missing or changed")
    data = certificate["data"]
    tokens_file = run_dir / data["tokens_file"]
    if not tokens_file.is_file() or sha256_file(tokens_file) != data["tokens_file_sha256"]:
        raise _mismatch(path, "data.tokens_file_sha256", f"{tokens_file} is missing or changed")
    ids = load_file(str(tokens_file))["input_ids"]
    if token_ids_sha256(ids) != data["sha256"]:
        raise _mismatch(path, "data.sha256", "the held-out token ids hash differently")
    return load_surrogate(run_dir), ids


def reproduce_claims(
    path: Path,
    certificate: dict,
    surrogate: Surrogate,
    pairs,
    tolerance: Tolerance,
) -> ErrorReport:
    """Recompute eps_max and coverage; VerificationError if the claims are not reproduced."""
    claimed = certificate["metrics"]
    abs_taus = [c["tau"] for c in claimed["coverage"] if c["kind"] == "abs"]
    rel_taus = [c["tau"] for c in claimed["coverage"] if c["kind"] == "rel"]
    report = measure_errors(surrogate, pairs, abs_taus, rel_taus, claimed["coverage"][0]["delta"])
    eps_slack = tolerance.eps_rel * abs(claimed["eps_max"]) + tolerance.eps_abs
    if not abs(report.eps_max - claimed["eps_max"]) <= eps_slack:
        raise _mismatch(
            path,
            "metrics.eps_max",
            f"claimed {claimed['eps_max']:.9g}, recomputed "
            f"{report.eps_max:.9g} ({tolerance.describe()})",
        )
    if report.n_tokens != claimed["n_tokens"]:
        raise _mismatch(path, "metrics.n_tokens", f"recomputed {report.n_tokens}")
    for mine, theirs in zip(report.coverage, claimed["coverage"], strict=True):
        if abs(mine.covered - theirs["covered"]) > tolerance.coverage_fraction * mine.n:
            raise _mismatch(
                path,
                f"metrics.coverage[{theirs['kind']}<={theirs['tau']:g}]",
                f"claimed {theirs['covered']}, recomputed {mine.covered} ({tolerance.describe()})",
            )
    return report
