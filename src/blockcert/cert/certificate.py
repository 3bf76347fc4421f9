"""Certificate: versioned JSON with hashes of every artifact and its own SHA-256.

certificate_sha256 = SHA-256 of the canonical JSON (sorted keys, no spaces, no NaN) of every
other field. Written atomically; read back (as untrusted input) with
`blockcert.verify.collect.load_certificate`, which checks its schema and that hash.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from blockcert.atomic import write_text_atomic
from blockcert.errors import BlockCertError
from blockcert.hashing import sha256_text

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
