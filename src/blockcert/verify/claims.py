"""Check a certificate against the artifacts it names, and re-derive every claim it makes.

The certificate, its IR and its token file are untrusted. In order:
1. `verify_artifacts`: block index, teacher weights hash, IR and weight file hashes, the IR graph
   against its family template (`block_view`), params / capacity / teacher params recomputed,
   held-out token file and token ids hashes, counts and shapes;
2. `check_split`: the train / held-out split rebuilt from the recorded recipe (corpus, sizes,
   seed) equals the token file, the training ids hash matches, and no held-out prompt is a
   training prompt;
3. `rederive_claims`: every metric recomputed with the reference code on teacher pairs of the
   held-out tokens; coverage entries matched by (kind, unit, tau), never by position.
Any mismatch raises VerificationError (exit 3) naming the file and the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from blockcert.capture.prompts import PromptSplit
from blockcert.cert.coverage import clopper_pearson_upper
from blockcert.cert.metrics import ErrorReport, measure_errors
from blockcert.errors import VerificationError
from blockcert.hashing import sha256_file, token_ids_sha256
from blockcert.surrogate.ir import Surrogate, load_surrogate
from blockcert.surrogate.view import BlockView, InvalidGraphError, block_view

SCALAR_METRICS = ("eps_max", "mean", "rms", "p50", "p99", "rel_max", "rel_mean", "rel_p99")


@dataclass(frozen=True)
class Tolerance:
    """How closely a recomputation must reproduce the certificate's claims."""

    eps_rel: float = 1e-4
    eps_abs: float = 1e-6
    coverage_fraction: float = 1e-3

    def describe(self) -> str:
        return (
            f"metrics within {self.eps_rel:g} relative + {self.eps_abs:g} absolute; coverage "
            f"counts within {self.coverage_fraction:g} of n"
        )

    def close(self, claimed: float, recomputed: float) -> bool:
        return abs(claimed - recomputed) <= self.eps_rel * abs(claimed) + self.eps_abs


@dataclass(frozen=True)
class VerifiedBlock:
    """A certificate whose hashes and IR passed; its claims are re-derived separately."""

    block: int
    path: Path
    certificate: dict
    surrogate: Surrogate
    view: BlockView
    heldout: torch.Tensor  # [n_prompts, seq] int64

    @property
    def sha256(self) -> str:
        return self.certificate["certificate_sha256"]


def _mismatch(path: Path, field: str, detail: str) -> VerificationError:
    return VerificationError(f"{path}: field {field} does not match: {detail}")


def _field(path: Path, certificate: dict, *keys: str):
    value = certificate
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise VerificationError(f"{path}: field {'.'.join(keys)} is missing.")
        value = value[key]
    return value


def verify_artifacts(
    path: Path, certificate: dict, model_sha256: str, num_blocks: int, teacher_params: list[int]
) -> VerifiedBlock:
    """Check every hash and the IR of one certificate; teacher_params[k]: block k's size."""
    run_dir = path.parent
    block = _field(path, certificate, "block")
    if not isinstance(block, int) or isinstance(block, bool) or not 0 <= block < num_blocks:
        raise _mismatch(
            path, "block", f"{block!r} is not a block of the model (0..{num_blocks - 1})"
        )
    if _field(path, certificate, "model", "sha256") != model_sha256:
        raise _mismatch(path, "model.sha256", "the teacher weights loaded now hash differently")
    files = _field(path, certificate, "surrogate", "files")
    for name, expected in files.items():
        file = run_dir / name
        if Path(name).name != name or not file.is_file() or sha256_file(file) != expected:
            raise _mismatch(path, f"surrogate.files[{name}]", f"{file} is missing or changed")
    surrogate = load_surrogate(run_dir)
    try:
        view = block_view(surrogate)
    except InvalidGraphError as err:
        raise VerificationError(f"{path}: {err}") from None
    _check_surrogate_claims(path, certificate, surrogate, view, teacher_params[block])
    heldout = _verified_tokens(path, certificate)
    return VerifiedBlock(block, path, certificate, surrogate, view, heldout)


def _check_surrogate_claims(path, certificate, surrogate, view, teacher_params: int) -> None:
    claimed = _field(path, certificate, "surrogate")
    recomputed = {
        "family": view.family,
        "params": view.num_params,
        "capacity": surrogate.graph.capacity,
        "teacher_params": teacher_params,
    }
    for key, value in recomputed.items():
        if claimed.get(key) != value:
            raise _mismatch(
                path, f"surrogate.{key}", f"claimed {claimed.get(key)!r}, IR gives {value!r}"
            )
    if surrogate.graph.capacity.get("teacher_params") != teacher_params:
        raise _mismatch(
            path, "surrogate.capacity.teacher_params", f"the teacher block has {teacher_params}"
        )


def _verified_tokens(path: Path, certificate: dict) -> torch.Tensor:
    data = _field(path, certificate, "data")
    tokens_file = path.parent / str(_field(path, certificate, "data", "tokens_file"))
    if not tokens_file.is_file() or sha256_file(tokens_file) != data.get("tokens_file_sha256"):
        raise _mismatch(path, "data.tokens_file_sha256", f"{tokens_file} is missing or changed")
    try:
        ids = load_file(str(tokens_file))["input_ids"]
    except (OSError, KeyError, ValueError) as err:
        raise _mismatch(path, "data.tokens_file", f"unreadable token file ({err})") from None
    if ids.dim() != 2 or ids.dtype != torch.int64 or ids.numel() == 0:
        raise _mismatch(
            path,
            "data.tokens_file",
            f"token ids must be int64 [prompts, seq], got {tuple(ids.shape)} {ids.dtype}",
        )
    if token_ids_sha256(ids) != data.get("sha256"):
        raise _mismatch(path, "data.sha256", "the held-out token ids hash differently")
    shape = {"n_prompts": ids.shape[0], "seq_len": ids.shape[1], "n_tokens": ids.numel()}
    for key, value in shape.items():
        if data.get(key) != value:
            raise _mismatch(
                path, f"data.{key}", f"claimed {data.get(key)!r}, the token file has {value}"
            )
    return ids


def check_split(block: VerifiedBlock, rebuilt: PromptSplit) -> None:
    """The rebuilt split must give the token file, the recorded training hash, disjointness."""
    path, data = block.path, block.certificate["data"]
    if not torch.equal(rebuilt.heldout, block.heldout):
        raise _mismatch(
            path,
            "data.tokens_file",
            "the held-out prompts are not the ones the recorded data recipe (corpus, sizes, seed) "
            "produces",
        )
    if token_ids_sha256(rebuilt.train) != data.get("train_sha256"):
        raise _mismatch(path, "data.train_sha256", "the rebuilt training prompts hash differently")
    if data.get("n_train_prompts") != len(rebuilt.train):
        raise _mismatch(path, "data.n_train_prompts", f"the recipe gives {len(rebuilt.train)}")
    train_rows = {tuple(row) for row in rebuilt.train.tolist()}
    shared = sum(tuple(row) in train_rows for row in block.heldout.tolist())
    if shared:
        raise _mismatch(
            path, "data.tokens_file", f"{shared} held-out prompt(s) are training prompts"
        )


def rederive_claims(block: VerifiedBlock, pairs, tolerance: Tolerance) -> ErrorReport:
    """Recompute every metric; VerificationError if a claim is not reproduced."""
    path = block.path
    claimed = _field(path, block.certificate, "metrics")
    entries = _field(path, block.certificate, "metrics", "coverage")
    keys = [_coverage_key(path, c) for c in entries]
    if len(set(keys)) != len(keys):
        raise _mismatch(path, "metrics.coverage", "an entry (kind, unit, tau) appears twice")
    taus = {kind: sorted({tau for k, _, tau in keys if k == kind}) for kind in ("abs", "rel")}
    deltas = {c.get("delta") for c in entries}
    if len(deltas) != 1 or not all(isinstance(d, float) and 0 < d < 1 for d in deltas):
        raise _mismatch(path, "metrics.coverage[].delta", "one confidence level 0 < delta < 1")
    report = measure_errors(block.surrogate, pairs, taus["abs"], taus["rel"], deltas.pop())
    mine = {c.key: c for c in report.coverage}
    if set(mine) != set(keys):
        raise _mismatch(path, "metrics.coverage", "each tau needs a token and a prompt entry")
    for name in ("n_prompts", "n_tokens"):
        if claimed.get(name) != getattr(report, name):
            raise _mismatch(path, f"metrics.{name}", f"recomputed {getattr(report, name)}")
    for name in (*SCALAR_METRICS, "target_norm_mean"):
        value = claimed.get(name)
        if not isinstance(value, (int, float)) or not tolerance.close(value, getattr(report, name)):
            raise _mismatch(
                path,
                f"metrics.{name}",
                f"claimed {value!r}, recomputed {getattr(report, name):.9g} "
                f"({tolerance.describe()})",
            )
    for entry, key in zip(entries, keys, strict=True):
        _check_coverage_entry(path, entry, mine[key], tolerance)
    return report


def _coverage_key(path: Path, entry: dict) -> tuple[str, str, float]:
    kind, unit, tau = entry.get("kind"), entry.get("unit"), entry.get("tau")
    if kind not in ("abs", "rel") or unit not in ("token", "prompt"):
        raise _mismatch(path, "metrics.coverage[].kind/unit", f"{kind!r}/{unit!r}")
    if not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau < 0:
        raise _mismatch(path, "metrics.coverage[].tau", f"{tau!r} is not a finite tau >= 0")
    return kind, unit, float(tau)


def _check_coverage_entry(path: Path, entry: dict, mine, tolerance: Tolerance) -> None:
    name = f"metrics.coverage[{mine.kind}/{mine.unit}<={mine.tau:g}]"
    covered, n = entry.get("covered"), entry.get("n")
    if n != mine.n:
        raise _mismatch(path, f"{name}.n", f"claimed {n!r}, recomputed {mine.n}")
    if (
        not isinstance(covered, int)
        or abs(covered - mine.covered) > tolerance.coverage_fraction * n
    ):
        raise _mismatch(path, f"{name}.covered", f"claimed {covered!r}, recomputed {mine.covered}")
    # the derived figures must follow from the claimed count (and so lie near the recomputed)
    fraction = covered / n
    if not math.isclose(entry.get("fraction", math.nan), fraction, rel_tol=1e-12, abs_tol=1e-15):
        raise _mismatch(
            path,
            f"{name}.fraction",
            f"claimed {entry.get('fraction')!r}, {covered}/{n} = {fraction:.12g}",
        )
    upper = clopper_pearson_upper(n - covered, n, mine.delta)
    if not math.isclose(entry.get("miss_rate_upper", math.nan), upper, rel_tol=1e-9, abs_tol=1e-15):
        raise _mismatch(
            path,
            f"{name}.miss_rate_upper",
            f"claimed {entry.get('miss_rate_upper')!r}, Clopper-Pearson gives {upper:.9g}",
        )
