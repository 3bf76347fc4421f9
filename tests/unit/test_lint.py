"""ruff (configured in pyproject.toml) passes on the whole tree, and no module reaches into
another module's private names."""

from __future__ import annotations

import ast
import shutil
import subprocess

import pytest

from tests.conftest import REPO

# where each top-level project package lives
PACKAGE_ROOTS = {"blockcert": REPO / "src", "tests": REPO, "bench": REPO}
SCANNED = ["src", "tests", "bench"]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is installed by .[test]")
@pytest.mark.parametrize("command", [["ruff", "check", "."], ["ruff", "format", "--check", "."]])
def test_ruff(command):
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_module(dotted: str) -> bool:
    parts = dotted.split(".")
    root = PACKAGE_ROOTS.get(parts[0])
    if root is None:
        return False
    path = root.joinpath(*parts)
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _absolute(node: ast.ImportFrom, package: str) -> str:
    """The module an ImportFrom reads, with relative imports resolved against `package`."""
    if not node.level:
        return node.module or ""
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def private_uses(source: str, package: str = "") -> list[str]:
    """Underscore names of other project modules that `source` imports, reads as attributes of
    an imported module, or names in setattr/getattr (monkeypatch.setattr included)."""
    tree = ast.parse(source)
    modules: dict[str, str] = {}  # local name -> the project module it is bound to
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGE_ROOTS:
                    local = alias.asname or alias.name.split(".")[0]
                    modules[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, package)
            if module.split(".")[0] not in PACKAGE_ROOTS:
                continue
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"line {node.lineno}: from {module} import {alias.name}")
                elif _is_module(f"{module}.{alias.name}"):
                    modules[alias.asname or alias.name] = f"{module}.{alias.name}"
    for node in ast.walk(tree):
        found.extend(_attribute_uses(node, modules))
    return sorted(set(found))


def _attribute_uses(node: ast.AST, modules: dict[str, str]) -> list[str]:
    """`module._name` (through submodules: `pkg.mod._name`) and setattr/getattr(module, "_name")."""
    if isinstance(node, ast.Call) and len(node.args) >= 2:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        target, attr = node.args[0], node.args[1]
        if (
            name in ("setattr", "getattr", "delattr")
            and isinstance(target, ast.Name)
            and target.id in modules
            and isinstance(attr, ast.Constant)
            and isinstance(attr.value, str)
            and _private(attr.value)
        ):
            return [f"line {node.lineno}: {name}({target.id}, {attr.value!r})"]
    if not isinstance(node, ast.Attribute):
        return []
    chain, base = [], node
    while isinstance(base, ast.Attribute):
        chain.append(base.attr)
        base = base.value
    if not (isinstance(base, ast.Name) and base.id in modules):
        return []
    dotted = modules[base.id]
    for attr in reversed(chain):
        if not _is_module(dotted):
            return []
        if _private(attr):
            return [f"line {node.lineno}: {dotted}.{attr}"]
        dotted = f"{dotted}.{attr}"
    return []


def test_private_name_scan_finds_every_form():
    """The scan below can fail: each way of reaching a private name is reported, public and
    dunder names and private names of other packages are not."""
    source = (
        "import blockcert.cert.spectral\n"
        "import blockcert.cert.spectral as sp\n"
        "from blockcert.cert import spectral\n"
        "from blockcert.cert.spectral import _a, b, __all__\n"
        "from os import _exit\n"
        "from . import _rel\n"
        "x = sp._c, spectral._d, spectral.e, blockcert.cert.spectral._f, sp.__name__\n"
        "monkeypatch.setattr(spectral, '_g', 1)\n"
        "setattr(spectral, 'h', 1)\n"
    )
    found = private_uses(source, package="blockcert.cert")
    names = [line.split(": ", 1)[1] for line in found]
    assert sorted(names) == sorted(
        [
            "from blockcert.cert.spectral import _a",
            "from blockcert.cert import _rel",
            "blockcert.cert.spectral._c",
            "blockcert.cert.spectral._d",
            "blockcert.cert.spectral._f",
            "setattr(spectral, '_g')",
        ]
    ), found


def test_no_module_uses_another_modules_private_names():
    """Every .py file under src/, tests/ and bench/: tests and benchmarks use public names only."""
    offences = []
    for folder in SCANNED:
        for path in sorted((REPO / folder).rglob("*.py")):
            relative = path.relative_to(REPO)
            parts = relative.with_suffix("").parts
            package = ".".join(parts[1:-1] if parts[0] == "src" else parts[:-1])
            source = path.read_text(encoding="utf-8")
            offences += [f"{relative} {use}" for use in private_uses(source, package)]
    assert not offences, "\n".join(offences)


def test_every_package_is_installed():
    """pyproject lists packages by hand (kernels/ installs as blockcert.kernels): none missing."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        ".".join(p.parent.relative_to(REPO / "src").parts)
        for p in (REPO / "src" / "blockcert").rglob("__init__.py")
    }
    # kernels/ has no __init__.py: from the repository root it must never be a package named
    # `kernels` (transformers imports a distribution of that name);
    # src/blockcert/kernels links to it
    assert not (REPO / "kernels" / "__init__.py").exists()
    assert (REPO / "src" / "blockcert" / "kernels").resolve() == (REPO / "kernels").resolve()
    assert set(config["packages"]) == found | {"blockcert.kernels"}
    assert config["package-dir"]["blockcert.kernels"] == "kernels"
