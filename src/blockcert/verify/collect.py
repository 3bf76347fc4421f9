"""Find certificates under a run directory or a sweep directory."""

from __future__ import annotations

from pathlib import Path

from blockcert.cert.certificate import CERTIFICATE_FILE, load_certificate
from blockcert.errors import BlockCertError


def latest_per_block(runs: str | Path, model: str) -> dict[int, tuple[Path, dict]]:
    """{block: (certificate path, certificate)} keeping the newest certificate of each block.

    Every certificate found is hash-checked (VerificationError on a mismatch).
    """
    runs = Path(runs)
    if not runs.exists():
        raise BlockCertError(f"runs={str(runs)!r} does not exist; run train.py first.")
    chosen: dict[int, tuple[Path, dict]] = {}
    for path in sorted(runs.rglob(CERTIFICATE_FILE)):
        certificate = load_certificate(path)
        if certificate["model"]["name"] != model:
            continue
        block = int(certificate["block"])
        if block not in chosen or certificate["created_at"] > chosen[block][1]["created_at"]:
            chosen[block] = (path, certificate)
    if not chosen:
        raise BlockCertError(
            f"no certificate of model {model!r} under {runs}; run `python train.py model={model}` "
            "first or point runs= at the run directory."
        )
    return dict(sorted(chosen.items()))
