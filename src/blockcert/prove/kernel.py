"""Kernel-check modules of the Lean project with the bundled Lean: compile, scan, audit axioms.

"checked" means all of:
- no source file contains an escape hatch (`scan_source`: `sorry`, `axiom`, `native_decide`,
  an option that skips the kernel, a hook into compiled evaluation, a second definition of a
  kernel-accelerated `Nat` operation);
- every module the targets import, then the targets, compiled without error (`lean -o`), so
  the kernel accepted each declaration, `check_ok` included: the kernel evaluated the checker
  on the run's numbers;
- `#print axioms` of every theorem in those modules reports that it depends on no axioms.
Modules compile into a fresh build folder, never into the project.
"""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from blockcert.errors import BlockCertError
from blockcert.prove.bundled import run_lean

# Tokens no file may contain: placeholder proofs, postulates, compiled evaluation, kernel skips.
FORBIDDEN = re.compile(
    r"\b(sorry|admit|axiom|native_decide|skipKernelTC|reduceBool|reduceNat|implemented_by|"
    r"extern|ofReduceBool|ofReduceNat)\b"
)
# The kernel evaluates these Nat operations with GMP by name: only BlockCert/Core.lean may define
# the four it uses, and no file may define the others (their definitions would be trusted too).
_ACCELERATED_USED = "add|mul|ble|div"
_ACCELERATED_OTHER = "sub|pow|gcd|mod|beq|land|lor|xor|shiftLeft|shiftRight|log2"
_DECLARATION = r"\b(?:def|theorem|abbrev|instance|opaque|inductive|structure|class)\s+(?:Nat\.)?"
_DEFINES_OTHER = re.compile(_DECLARATION + rf"({_ACCELERATED_OTHER})\b")
_DEFINES_USED = re.compile(_DECLARATION + rf"({_ACCELERATED_USED})\b")
_OPTION = re.compile(r"\bset_option\s+(\S+)")
ALLOWED_OPTIONS = {"genCtorIdx", "bootstrap.inductiveCheckResultingUniverse"}
CORE_MODULE = "BlockCert.Core"
_IMPORT = re.compile(r"^import\s+(\S+)\s*$", re.M)
_NO_AXIOMS = re.compile(r"^'(?P<name>[^']+)' does not depend on any axioms$", re.M)


class LeanCheckError(BlockCertError):
    """The kernel check did not pass: a module failed, a source is unsafe, or an axiom is used."""


@dataclass(frozen=True)
class KernelRun:
    modules: list[str]  # compiled, in dependency order
    theorems: list[str]  # audited by `#print axioms`
    seconds: float


def module_path(lean_root: Path, module: str) -> Path:
    return Path(lean_root) / (module.replace(".", "/") + ".lean")


def strip_comments(text: str) -> str:
    """The source without its comments: nested `/- ... -/` blocks and `--` to the line's end."""
    out, depth, i = [], 0, 0
    while i < len(text):
        pair = text[i : i + 2]
        if pair == "/-":
            depth, i = depth + 1, i + 2
        elif pair == "-/" and depth:
            depth, i = depth - 1, i + 2
        elif pair == "--" and not depth:
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        else:
            if not depth or text[i] == "\n":
                out.append(text[i])  # keep line breaks, so line structure survives
            i += 1
    return "".join(out)


def scan_source(module: str, text: str) -> None:
    """Refuse a source with an escape hatch (see FORBIDDEN and the accelerated Nat names).

    Comments are skipped (certificate paths in them may contain any word); string literals and
    «quoted» names are refused, as `strip_comments` does not lex them."""
    code = strip_comments(text)
    problems = [f"`{m.group(0)}`" for m in FORBIDDEN.finditer(code)]
    problems += [f"a definition of `{m.group(1)}`" for m in _DEFINES_OTHER.finditer(code)]
    if module != CORE_MODULE:
        problems += [f"a definition of `{m.group(1)}`" for m in _DEFINES_USED.finditer(code)]
    problems += [
        f"`set_option {m.group(1)}`"
        for m in _OPTION.finditer(code)
        if m.group(1) not in ALLOWED_OPTIONS
    ]
    problems += [f"a `{c}` (string literal or quoted name)" for c in '"«' if c in code]
    if not code.lstrip().startswith("prelude"):
        problems.append("no leading `prelude` (it would import a library the checker lacks)")
    if problems:
        raise LeanCheckError(f"{module} is refused: it contains {', '.join(problems)}.")


def module_order(lean_root: Path, targets: list[str]) -> list[str]:
    """The targets and every project module they import, each after its imports."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(module: str) -> None:
        if module in order:
            return
        if module in visiting:
            raise LeanCheckError(f"{module} imports itself through a cycle.")
        path = module_path(lean_root, module)
        if not path.is_file():
            raise LeanCheckError(f"module {module} has no source {path}.")
        visiting.add(module)
        for imported in _IMPORT.findall(strip_comments(path.read_text(encoding="utf-8"))):
            visit(imported)
        visiting.discard(module)
        order.append(module)

    for target in targets:
        visit(target)
    return order


def declared_theorems(text: str) -> list[str]:
    """Full names of the `theorem`s of a source, following `namespace`/`section`/`end`."""
    scopes: list[str] = []  # namespace parts, "" for a section
    names = []
    for line in strip_comments(text).splitlines():
        words = line.split()
        if not words or line[0].isspace():
            continue
        if words[0] == "namespace":
            scopes.append(words[1])
        elif words[0] == "section" or words[:2] == ["noncomputable", "section"]:
            scopes.append("")
        elif words[0] == "end" and scopes:
            scopes.pop()
        elif words[0] == "theorem":
            prefix = ".".join(s for s in scopes if s)
            names.append(f"{prefix}.{words[1]}" if prefix else words[1])
    return names


def _tail(text: str, lines: int = 12) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


def compile_module(
    library: Path, lean_root: Path, module: str, build: Path, timeout_s: float = 300
) -> None:
    """`lean -o build/<module>.olean` with LEAN_PATH = build; raises LeanCheckError if rejected."""
    olean = build / (module.replace(".", "/") + ".olean")
    olean.parent.mkdir(parents=True, exist_ok=True)
    source = module_path(lean_root, module).relative_to(lean_root)
    proc = run_lean(library, ["-o", str(olean), str(source)], lean_root, build, timeout_s)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0 or ": error" in output:
        raise LeanCheckError(f"the Lean kernel rejected {module}: {_tail(output)}")


def audit_axioms(library: Path, modules: list[str], theorems: list[str], build: Path) -> str:
    """`#print axioms` of every theorem: each must depend on no axioms. Returns Lean's output."""
    lines = ["prelude", *(f"import {m}" for m in modules), ""]
    lines += [f"#print axioms {name}" for name in theorems]
    audit = build / "BlockCertAudit.lean"
    audit.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = run_lean(library, [audit.name], build, build)
    output = proc.stdout + proc.stderr
    clean = set(_NO_AXIOMS.findall(output))
    unclean = [name for name in theorems if name not in clean]
    if proc.returncode != 0 or unclean:
        raise LeanCheckError(
            f"`#print axioms` does not clear {unclean or 'the audit'}: {_tail(output)}"
        )
    return output


def kernel_check(
    library: Path, lean_root: Path, targets: list[str], timeout_s: float = 300
) -> KernelRun:
    """Scan, compile and audit `targets` and their imports; raises LeanCheckError on failure."""
    start = time.perf_counter()
    lean_root = Path(lean_root).resolve()
    modules = module_order(lean_root, targets)
    texts = {m: module_path(lean_root, m).read_text(encoding="utf-8") for m in modules}
    for module, text in texts.items():
        scan_source(module, text)
    theorems = [name for m in modules for name in declared_theorems(texts[m])]
    with tempfile.TemporaryDirectory(prefix="blockcert-lean-") as tmp:
        build = Path(tmp)
        for module in modules:
            compile_module(library, lean_root, module, build, timeout_s)
        audit_axioms(library, modules, theorems, build)
    return KernelRun(modules, theorems, time.perf_counter() - start)
