"""Check a certificate against the artifacts it names, and re-derive every claim it makes.

The certificate, its IR and its token file are untrusted. In order:
1. `verify_artifacts` (after collect.py parsed the certificate against its schema): teacher
   weights hash; the IR JSON and weights read as bounded regular files of the run directory,
   hashed as read; the IR JSON against its schema, the weights' safetensors header before any
   tensor is built (float32 only, at most the teacher block's parameter count); the IR graph
   against its family template (`block_view`); the family and d_model against the teacher's;
   params / capacity / teacher params recomputed; the held-out token file (one int64 tensor
   `[prompts, seq]`) and its hashes, counts and shape;
2. `check_split`: the train / held-out split rebuilt from the recorded recipe (corpus, sizes,
   seed) equals the token file, the training ids hash matches, and no held-out prompt is a
   training prompt;
3. `rederive_claims`: every metric recomputed with the reference code on teacher pairs of the
   held-out tokens; coverage entries matched by (kind, unit, tau), never by position.
Any mismatch raises VerificationError (exit 3) naming the file and the field; `blame` turns any
other error while a file is checked (a malformed tensor file, a shape the interpreter cannot
run) into one too.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors

from blockcert.capture.prompts import PromptSplit
from blockcert.cert.coverage import clopper_pearson_upper
from blockcert.cert.metrics import ErrorReport, measure_errors
from blockcert.errors import BlockCertError, VerificationError
from blockcert.hashing import sha256_bytes, token_ids_sha256
from blockcert.models.adapters import adapter_for
from blockcert.models.teacher import Teacher
from blockcert.surrogate.extract import extract_block
from blockcert.surrogate.ir import GRAPH_FILE, WEIGHTS_FILE, Graph, Node, Surrogate
from blockcert.surrogate.view import BlockView, InvalidGraphError, block_view, replacing_families
from blockcert.verify.run_files import (
    GRAPH_MAX_BYTES,
    SAFETENSORS_HEADER_MAX_BYTES,
    parse_json,
    read_run_file,
    safetensors_header,
    tensor_elements,
)
from blockcert.verify.schema import parse_graph

SCALAR_METRICS = ("eps_max", "mean", "rms", "p50", "p99", "rel_max", "rel_mean", "rel_p99")
TOKENS_MAX_BYTES = 256 << 20  # 32 M token ids


@dataclass(frozen=True)
class TeacherFacts:
    """What a certificate is checked against: the teacher loaded now."""

    sha256: str
    family: str
    d_model: int
    block_params: list[int]  # parameters of each teacher block

    @property
    def num_blocks(self) -> int:
        return len(self.block_params)

    @classmethod
    def of(cls, teacher: Teacher) -> TeacherFacts:
        adapter = adapter_for(teacher)
        return cls(
            sha256=teacher.weights_sha256,
            family=teacher.family,
            d_model=adapter.d_model,
            block_params=[extract_block(adapter, k).num_params for k in range(adapter.num_blocks)],
        )


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


@contextlib.contextmanager
def blame(path: Path) -> Iterator[None]:
    """Any error other than the project's own while `path` is checked: one line naming it."""
    try:
        yield
    except BlockCertError:
        raise
    except (Exception, RecursionError, MemoryError) as err:
        detail = " ".join(str(err).split())[:300]
        raise VerificationError(f"{path}: {type(err).__name__}: {detail}") from None


def _mismatch(path: Path, field: str, detail: str) -> VerificationError:
    return VerificationError(f"{path}: field {field} does not match: {detail}")


def verify_artifacts(path: Path, certificate: dict, teacher: TeacherFacts) -> VerifiedBlock:
    """Check every hash and the IR of one schema-checked certificate against the teacher."""
    block = certificate["block"]
    if block >= teacher.num_blocks:
        raise _mismatch(
            path, "block", f"{block} is not a block of the model (0..{teacher.num_blocks - 1})"
        )
    if certificate["model"]["sha256"] != teacher.sha256:
        raise _mismatch(path, "model.sha256", "the teacher weights loaded now hash differently")
    surrogate = _load_surrogate(path, certificate, teacher.block_params[block])
    try:
        view = block_view(surrogate)
    except InvalidGraphError as err:
        raise VerificationError(f"{path}: {err}") from None
    _check_against_teacher(path, view, teacher)
    _check_surrogate_claims(path, certificate, surrogate, view, teacher.block_params[block])
    heldout = _verified_tokens(path, certificate)
    return VerifiedBlock(block, path, certificate, surrogate, view, heldout)


def _hashed_file(path: Path, certificate: dict, name: str, max_bytes: int) -> bytes:
    data = read_run_file(path.parent, name, f"surrogate.files[{name}]", max_bytes, str(path))
    if sha256_bytes(data) != certificate["surrogate"]["files"][name]:
        raise _mismatch(path, f"surrogate.files[{name}]", f"{path.parent / name} changed")
    return data


def _load_surrogate(path: Path, certificate: dict, teacher_params: int) -> Surrogate:
    """The IR graph and weights, read, hashed and parsed before any tensor is built."""
    graph_where = str(path.parent / GRAPH_FILE)
    graph_data = _hashed_file(path, certificate, GRAPH_FILE, GRAPH_MAX_BYTES)
    graph = parse_graph(parse_json(graph_data, graph_where), graph_where)
    # a surrogate is never larger than the teacher block it replaces
    weights_max = 8 + SAFETENSORS_HEADER_MAX_BYTES + 4 * teacher_params
    weights_where = str(path.parent / WEIGHTS_FILE)
    weights_data = _hashed_file(path, certificate, WEIGHTS_FILE, weights_max)
    header = safetensors_header(weights_data, weights_where)
    dtypes = sorted({entry["dtype"] for entry in header.values()} - {"F32"})
    if dtypes:
        raise VerificationError(f"{weights_where}: weights must be float32, found {dtypes[0]}.")
    if tensor_elements(header) > teacher_params:
        raise VerificationError(
            f"{weights_where}: {tensor_elements(header)} parameters, more than the teacher "
            f"block's {teacher_params}."
        )
    weights = load_safetensors(weights_data)
    nodes = [Node(**node.model_dump()) for node in graph.nodes]
    ir = Graph(**{**graph.model_dump(), "nodes": nodes})
    return Surrogate(ir, weights)


def _check_against_teacher(path: Path, view: BlockView, teacher: TeacherFacts) -> None:
    if view.family not in replacing_families(teacher.family):
        raise _mismatch(
            path, "surrogate.family", f"{view.family!r} cannot replace a {teacher.family} block"
        )
    if view.d_model != teacher.d_model:
        raise _mismatch(path, "d_model", f"IR has {view.d_model}, the teacher {teacher.d_model}")


def _check_surrogate_claims(path, certificate, surrogate, view, teacher_params: int) -> None:
    claimed = certificate["surrogate"]
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
    data = certificate["data"]
    name = data["tokens_file"]
    where = str(path.parent / name)
    raw = read_run_file(path.parent, name, "data.tokens_file", TOKENS_MAX_BYTES, str(path))
    if sha256_bytes(raw) != data["tokens_file_sha256"]:
        raise _mismatch(path, "data.tokens_file_sha256", f"{where} is missing or changed")
    header = safetensors_header(raw, where)
    entry = header.get("input_ids")
    if set(header) != {"input_ids"} or entry["dtype"] != "I64" or len(entry["shape"]) != 2:
        raise _mismatch(
            path, "data.tokens_file", "the token file must hold one int64 tensor input_ids [n, seq]"
        )
    ids = load_safetensors(raw)["input_ids"]
    if ids.numel() == 0:
        raise _mismatch(path, "data.tokens_file", "the token file holds no token")
    if token_ids_sha256(ids) != data["sha256"]:
        raise _mismatch(path, "data.sha256", "the held-out token ids hash differently")
    shape = {"n_prompts": ids.shape[0], "seq_len": ids.shape[1], "n_tokens": ids.numel()}
    for key, value in shape.items():
        if data[key] != value:
            raise _mismatch(
                path, f"data.{key}", f"claimed {data[key]!r}, the token file has {value}"
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
    if token_ids_sha256(rebuilt.train) != data["train_sha256"]:
        raise _mismatch(path, "data.train_sha256", "the rebuilt training prompts hash differently")
    if data["n_train_prompts"] != len(rebuilt.train):
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
    claimed = block.certificate["metrics"]
    entries = claimed["coverage"]
    keys = [_coverage_key(c) for c in entries]
    if len(set(keys)) != len(keys):
        raise _mismatch(path, "metrics.coverage", "an entry (kind, unit, tau) appears twice")
    taus = {kind: sorted({tau for k, _, tau in keys if k == kind}) for kind in ("abs", "rel")}
    deltas = {c["delta"] for c in entries}
    if len(deltas) != 1:
        raise _mismatch(path, "metrics.coverage[].delta", "one confidence level 0 < delta < 1")
    report = measure_errors(block.surrogate, pairs, taus["abs"], taus["rel"], deltas.pop())
    mine = {c.key: c for c in report.coverage}
    if set(mine) != set(keys):
        raise _mismatch(path, "metrics.coverage", "each tau needs a token and a prompt entry")
    for name in ("n_prompts", "n_tokens"):
        if claimed[name] != getattr(report, name):
            raise _mismatch(path, f"metrics.{name}", f"recomputed {getattr(report, name)}")
    for name in (*SCALAR_METRICS, "target_norm_mean"):
        value = claimed[name]
        if not tolerance.close(value, getattr(report, name)):
            raise _mismatch(
                path,
                f"metrics.{name}",
                f"claimed {value!r}, recomputed {getattr(report, name):.9g} "
                f"({tolerance.describe()})",
            )
    for entry, key in zip(entries, keys, strict=True):
        _check_coverage_entry(path, entry, mine[key], tolerance)
    return report


def _coverage_key(entry: dict) -> tuple[str, str, float]:
    # types and ranges are the schema's (verify/schema.py: CoverageEntry)
    return entry["kind"], entry["unit"], float(entry["tau"])


def _check_coverage_entry(path: Path, entry: dict, mine, tolerance: Tolerance) -> None:
    name = f"metrics.coverage[{mine.kind}/{mine.unit}<={mine.tau:g}]"
    covered, n = entry["covered"], entry["n"]
    if n != mine.n:
        raise _mismatch(path, f"{name}.n", f"claimed {n!r}, recomputed {mine.n}")
    if abs(covered - mine.covered) > tolerance.coverage_fraction * n:
        raise _mismatch(path, f"{name}.covered", f"claimed {covered!r}, recomputed {mine.covered}")
    # the derived figures must follow from the claimed count (and so lie near the recomputed)
    fraction = covered / n
    if not math.isclose(entry["fraction"], fraction, rel_tol=1e-12, abs_tol=1e-15):
        raise _mismatch(
            path,
            f"{name}.fraction",
            f"claimed {entry['fraction']!r}, {covered}/{n} = {fraction:.12g}",
        )
    upper = clopper_pearson_upper(n - covered, n, mine.delta)
    if not math.isclose(entry["miss_rate_upper"], upper, rel_tol=1e-9, abs_tol=1e-15):
        raise _mismatch(
            path,
            f"{name}.miss_rate_upper",
            f"claimed {entry['miss_rate_upper']!r}, Clopper-Pearson gives {upper:.9g}",
        )
