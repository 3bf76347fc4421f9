"""Run `lake build` on the Lean project when a toolchain is installed; never claim otherwise.

"checked" means exactly one thing: `lake build` ran in the Lean project and exited 0 without any
`sorry` warning, so the kernel accepted every module, generated instances included.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from blockcert.prove.result import INSTALL_HINT, LeanResult


def _toolchain_version(lean_root: Path) -> str | None:
    """`lean --version` run inside the project, so elan picks the pinned `lean-toolchain`."""
    lean = shutil.which("lean")
    if lean is None:
        return None
    try:
        proc = subprocess.run(
            [lean, "--version"], cwd=lean_root, capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def _tail(text: str, lines: int = 8) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


def run_lake_build(lean_root: Path, timeout_s: int = 600) -> LeanResult:
    """`lake build` in `lean_root`: "checked" only on success, "skipped" without `lake`."""
    lean_root = Path(lean_root)
    lake = shutil.which("lake")
    if lake is None:
        return LeanResult(
            "skipped",
            None,
            f"`lake` is not on PATH, so the Lean proofs were NOT kernel-checked; {INSTALL_HINT}.",
        )
    if not (lean_root / "lakefile.toml").is_file() and not (lean_root / "lakefile.lean").is_file():
        return LeanResult("failed", None, f"{lean_root} has no lakefile: not the Lean project.")
    try:
        proc = subprocess.run(
            [lake, "build"], cwd=lean_root, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return LeanResult(
            "failed", None, f"`lake build` timed out after {timeout_s} s: NOT kernel-checked."
        )
    except OSError as err:
        return LeanResult("failed", None, f"`lake build` could not start ({err}): NOT checked.")
    toolchain = _toolchain_version(lean_root)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        return LeanResult("failed", toolchain, "`lake build` failed: " + _tail(output))
    if "declaration uses 'sorry'" in output:
        return LeanResult(
            "failed", toolchain, "`lake build` passed but a declaration uses sorry: NOT checked."
        )
    return LeanResult(
        "checked", toolchain, "`lake build` succeeded: the Lean kernel checked every module."
    )
