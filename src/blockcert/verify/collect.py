"""Find and parse the certificates to compose under a run directory or a sweep directory.

Which certificate stands for a block is decided by path order, never by a field inside the
(untrusted) certificate: run directories are named by start time, so the last path in sorted
order is the newest run. Every choice is returned so that the report can list it. Edited blocks
(edit.py, under an `edits/` directory) stand in for a block only when `runs` points inside
that directory, never by accident of path order.

Every `certificate.json` found is read as a regular file of bounded size (no symlink, FIFO or
device: verify/run_files.py), parsed against the strict schema (verify/schema.py) and its own
hash checked before any field of it is used.
"""

from __future__ import annotations

from pathlib import Path

from blockcert.cert.certificate import CERTIFICATE_FILE, certificate_sha256
from blockcert.errors import BlockCertError, VerificationError
from blockcert.verify.run_files import CERTIFICATE_MAX_BYTES, find_files, parse_json, read_regular
from blockcert.verify.schema import parse_certificate

EDITS_DIR = "edits"  # edit.py's runs: runs/<model>/edits/<time>/


def load_certificate(path: str | Path) -> dict:
    """The certificate at `path`, schema-checked and its own hash verified (exit 3 if not)."""
    path = Path(path)
    where = str(path)
    value = parse_json(read_regular(path, CERTIFICATE_MAX_BYTES, where), where)
    if not isinstance(value, dict):
        raise VerificationError(f"{where}: a certificate is a JSON object.")
    parse_certificate(value, where)
    if value["certificate_sha256"] != certificate_sha256(value):
        raise VerificationError(
            f"{where}: field certificate_sha256 does not match the canonical JSON of the other "
            "fields (the certificate was edited)."
        )
    return value


def certificates_per_block(runs: str | Path, model: str) -> dict[int, tuple[Path, dict]]:
    """{block: (certificate path, certificate)}, the last path in sorted order for each block.

    Every certificate found is checked (VerificationError on a malformed or edited one).
    """
    runs = Path(runs)
    if not runs.is_dir():
        raise BlockCertError(f"runs={str(runs)!r} is not a directory; run train.py first.")
    chosen: dict[int, tuple[Path, dict]] = {}
    for path in find_files(runs, CERTIFICATE_FILE):
        if EDITS_DIR in path.relative_to(runs).parts[:-1]:
            continue  # an edit is composed only when runs= points at it
        certificate = load_certificate(path)
        if certificate["model"]["name"] != model:
            continue
        chosen[certificate["block"]] = (path, certificate)  # later paths replace earlier ones
    if not chosen:
        raise BlockCertError(
            f"no certificate of model {model!r} under {runs}; run `python train.py model={model}` "
            "first or point runs= at the run directory."
        )
    return dict(sorted(chosen.items()))
