"""Certificate: versioned JSON with hashes of every artifact and its own SHA-256.

certificate_sha256 = SHA-256 of the canonical JSON (sorted keys, no spaces, no NaN) of every
other field. Written atomically; read back with `load_certificate`, which checks that hash.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from blockcert.atomic import write_text_atomic
from blockcert.errors import BlockCertError, VerificationError
from blockcert.hashing import sha256_text

SCHEMA_VERSION = 2  # 2: coverage per token and per prompt; data.recipe
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


def load_certificate(path: str | Path) -> dict:
    """Read a certificate and check its schema version and own hash (VerificationError if not)."""
    path = Path(path)
    try:
        certificate = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise VerificationError(f"{path}: not a readable certificate ({err}).") from None
    if certificate.get("schema_version") != SCHEMA_VERSION:
        raise VerificationError(
            f"{path}: schema_version {certificate.get('schema_version')} is not {SCHEMA_VERSION}."
        )
    if certificate.get("certificate_sha256") != certificate_sha256(certificate):
        raise VerificationError(
            f"{path}: field certificate_sha256 does not match the canonical JSON of the other "
            "fields (the certificate was edited)."
        )
    return certificate
