"""Certificate: versioned JSON with hashes of every artifact and its own SHA-256.

`certify_block` builds and writes it (train.py's callback, edits and re-certification all call
it): the surrogate IR, the held-out token ids, the error metrics on the held-out pairs, the
Lipschitz constants as the `lipschitz` options say, hashes of every file.
certificate_sha256 = SHA-256 of the canonical JSON (sorted keys, no spaces, no NaN) of every
other field. Written atomically; read back (as untrusted input) with
`blockcert.verify.collect.load_certificate`, which checks its schema and that hash.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import save_file

from blockcert.atomic import write_atomic, write_text_atomic
from blockcert.capture.prompts import PromptSplit
from blockcert.cert.lipschitz import (
    LipschitzOptions,
    empirical_lipschitz,
    not_computed,
    sound_lipschitz,
)
from blockcert.cert.metrics import measure_errors
from blockcert.errors import BlockCertError
from blockcert.hashing import sha256_file, sha256_text, token_ids_sha256
from blockcert.models.teacher import Teacher
from blockcert.surrogate.ir import GRAPH_FILE, WEIGHTS_FILE, Surrogate, save_surrogate
from blockcert.surrogate.view import block_view

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3  # 3: data.recipe names a corpus by key, never code; lipschitz.*.vacuous
CERTIFICATE_FILE = "certificate.json"
TOKENS_FILE = "heldout_tokens.safetensors"


def canonical_json(data: dict) -> str:
    try:
        return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise BlockCertError("certificate holds NaN or Inf; refusing to write it.") from None


def certificate_sha256(certificate: dict) -> str:
    body = {k: v for k, v in certificate.items() if k != "certificate_sha256"}
    return sha256_text(canonical_json(body))


def lipschitz_claim(lipschitz) -> dict:
    """A Lipschitz constant as a certificate records it, with `vacuous`: for a sound L with a
    saturation constant a (parts["saturation"]), whether L*r >= r + a, i.e. at its own radius
    the chain step min(L*B, B + a) is B + a and L decides nothing; None where not applicable."""
    claim = lipschitz.to_dict()
    a = claim["parts"].get("saturation")
    value, radius = claim["value"], claim["radius"]
    applies = claim["kind"] == "sound" and value is not None and a is not None
    claim["vacuous"] = bool(value * radius >= radius + a) if applies else None
    return claim


def code_version() -> dict[str, str | None]:
    try:
        package = version("blockcert")
    except PackageNotFoundError:
        package = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"package_version": package, "git_commit": commit or None}


def seal(body: dict) -> dict:
    """Add schema_version, created_at (if absent) and the certificate's own hash."""
    certificate = {"schema_version": SCHEMA_VERSION, **body}
    certificate.setdefault("created_at", dt.datetime.now(dt.timezone.utc).isoformat())
    certificate["certificate_sha256"] = certificate_sha256(certificate)
    return certificate


def write_certificate(directory: str | Path, certificate: dict) -> Path:
    text = json.dumps(certificate, indent=2, sort_keys=True, allow_nan=False) + "\n"
    return write_text_atomic(Path(directory) / CERTIFICATE_FILE, text)


@dataclass(frozen=True)
class CertificateOptions:
    """What a certificate measures (conf/callbacks/default.yaml: certificate): coverage at
    absolute and relative thresholds with Clopper-Pearson at confidence 1 - delta; the tube
    radius of its Lipschitz constants (None: the block's own eps_max)."""

    taus_abs: tuple[float, ...]
    taus_rel: tuple[float, ...]
    delta: float = 0.05
    radius: float | None = None

    @classmethod
    def from_config(cls, config: Mapping) -> CertificateOptions:
        return cls(
            tuple(float(t) for t in config["taus_abs"]),
            tuple(float(t) for t in config["taus_rel"]),
            float(config.get("delta", 0.05)),
            None if config.get("radius") is None else float(config["radius"]),
        )


class HeldOutPairs(Protocol):
    """Where a block's held-out pairs come from (lit.data.ResidualPairDataModule is one)."""

    block: int
    prompts: PromptSplit

    @property
    def teacher(self) -> Teacher: ...

    @property
    def pairs_source(self) -> dict[str, str]: ...

    def heldout_pairs(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


def _first_inputs(source: HeldOutPairs, n_prompts: int | None) -> Iterator[torch.Tensor]:
    """Held-out input batches, cut after n_prompts prompts (None: all)."""
    left = n_prompts
    for x, _ in source.heldout_pairs():
        if left is not None:
            if left <= 0:
                return
            x = x[:left]
            left -= len(x)
        yield x


def certificate_lipschitz(
    surrogate: Surrogate, source: HeldOutPairs, radius: float, options: LipschitzOptions
) -> dict:
    """{"sound", "empirical"} claims on the tube of `radius` around the first held-out prompts;
    a count of 0 means not computed (value None, the reason in its parts)."""
    if options.sound_prompts == 0:
        sound = not_computed("sound", radius)
    else:
        inputs = _first_inputs(source, options.sound_prompts)
        sound = sound_lipschitz(
            surrogate,
            inputs,
            radius,
            options.tube_shells,
            options.refine_tokens,
            joint_tokens=options.joint_tokens,
        )
    if options.empirical_prompts == 0:
        empirical = not_computed("empirical", radius)
    else:
        probe = torch.cat(list(_first_inputs(source, options.empirical_prompts)))
        empirical = empirical_lipschitz(surrogate, probe, radius, **options.search())
    return {"sound": lipschitz_claim(sound), "empirical": lipschitz_claim(empirical)}


def certify_block(
    surrogate: Surrogate,
    source: HeldOutPairs,
    run_dir: Path,
    options: CertificateOptions,
    lipschitz: LipschitzOptions,
    config: dict,
) -> dict:
    """Measure, hash and write the certificate of `surrogate` for block `source.block`.

    The Lipschitz constants are informational (certify.py recomputes both on the composed
    tube): lipschitz.sound_prompts / empirical_prompts = 0 leaves them out.
    """
    run_dir = Path(run_dir)
    heldout = source.prompts.heldout
    block_view(surrogate)  # never certify a graph the verifier would reject
    files = save_surrogate(surrogate, run_dir)
    write_atomic(
        run_dir / TOKENS_FILE, lambda tmp: save_file({"input_ids": heldout.contiguous()}, str(tmp))
    )
    report = measure_errors(
        surrogate, source.heldout_pairs(), options.taus_abs, options.taus_rel, options.delta
    )
    # The tube radius defaults to this block's own eps_max: the deviation one upstream block of
    # similar quality would feed in. certify.py recomputes L at the composed radius.
    tube = options.radius if options.radius is not None else max(report.eps_max, 1e-6)
    capacity = dict(surrogate.graph.capacity)
    body = {
        "model": source.teacher.describe(),
        "block": source.block,
        "surrogate": {
            "family": surrogate.graph.family,
            "capacity": capacity,
            "params": surrogate.num_params,
            "teacher_params": capacity.get("teacher_params"),
            "files": {GRAPH_FILE: files[GRAPH_FILE], WEIGHTS_FILE: files[WEIGHTS_FILE]},
        },
        "data": {
            **source.prompts.source,
            "split": "heldout",
            "n_prompts": report.n_prompts,
            "n_tokens": report.n_tokens,
            "seq_len": source.prompts.seq_len,
            "tokens_file": TOKENS_FILE,
            "tokens_file_sha256": sha256_file(run_dir / TOKENS_FILE),
            "sha256": token_ids_sha256(heldout),
            "train_sha256": token_ids_sha256(source.prompts.train),
            "n_train_prompts": len(source.prompts.train),
            "pairs_source": source.pairs_source,
            "recipe": source.prompts.recipe,
        },
        "metrics": report.to_dict(),
        "lipschitz": certificate_lipschitz(surrogate, source, tube, lipschitz),
        "code": code_version(),
        "config": config,
    }
    certificate = seal(body)
    write_certificate(run_dir, certificate)
    log.info("certificate written to %s", run_dir / CERTIFICATE_FILE)
    return certificate
