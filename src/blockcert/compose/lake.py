"""Run `lake build` on the Lean project when a toolchain is installed; never claim otherwise."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = (
    "install Lean with elan (curl https://raw.githubusercontent.com/leanprover/elan/master/"
    "elan-init.sh -sSf | sh), then run `cd lean && lake build`"
)


@dataclass(frozen=True)
class LeanResult:
    status: str  # "checked" | "skipped" | "failed"
    toolchain: str | None
    message: str


def run_lake_build(lean_root: Path, timeout_s: int = 600) -> LeanResult:
    lake = shutil.which("lake")
    if lake is None:
        return LeanResult(
            "skipped (no toolchain)",
            None,
            f"`lake` is not on PATH, so the proofs were NOT kernel-checked; {INSTALL_HINT}.",
        )
    lean = shutil.which("lean")
    toolchain = None
    if lean is not None:
        version = subprocess.run([lean, "--version"], capture_output=True, text=True, timeout=60)
        toolchain = version.stdout.strip() or None
    try:
        proc = subprocess.run(
            [lake, "build"], cwd=lean_root, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return LeanResult("failed", toolchain, f"`lake build` timed out after {timeout_s} s.")
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        return LeanResult("failed", toolchain, "`lake build` failed: " + " | ".join(tail))
    return LeanResult("checked", toolchain, "`lake build` succeeded: the Lean kernel checked it.")
