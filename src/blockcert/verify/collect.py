"""Find the certificates to compose under a run directory or a sweep directory.

Which certificate stands for a block is decided by path order, never by a field inside the
(untrusted) certificate: run directories are named by start time, so the last path in sorted
order is the newest run. Every choice is returned so that the report can list it. Edited blocks
(edit.py, under an `edits/` directory) stand in for a block only when `runs` points inside
that directory, never by accident of path order.
"""

from __future__ import annotations

from pathlib import Path

from blockcert.cert.certificate import CERTIFICATE_FILE, load_certificate
from blockcert.errors import BlockCertError

EDITS_DIR = "edits"  # edit.py's runs: runs/<model>/edits/<time>/


def certificates_per_block(runs: str | Path, model: str) -> dict[int, tuple[Path, dict]]:
    """{block: (certificate path, certificate)}, the last path in sorted order for each block.

    Every certificate found is hash-checked (VerificationError on a mismatch).
    """
    runs = Path(runs)
    if not runs.exists():
        raise BlockCertError(f"runs={str(runs)!r} does not exist; run train.py first.")
    chosen: dict[int, tuple[Path, dict]] = {}
    for path in sorted(runs.rglob(CERTIFICATE_FILE)):
        if EDITS_DIR in path.relative_to(runs).parts[:-1]:
            continue  # an edit is composed only when runs= points at it
        certificate = load_certificate(path)
        if certificate.get("model", {}).get("name") != model:
            continue
        block = certificate.get("block")
        if not isinstance(block, int) or isinstance(block, bool):
            raise BlockCertError(f"{path}: field block {block!r} is not an integer.")
        chosen[block] = (path, certificate)  # later paths replace earlier ones
    if not chosen:
        raise BlockCertError(
            f"no certificate of model {model!r} under {runs}; run `python train.py model={model}` "
            "first or point runs= at the run directory."
        )
    return dict(sorted(chosen.items()))
