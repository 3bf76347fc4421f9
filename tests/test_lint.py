"""ruff (configured in pyproject.toml) passes on the whole tree."""

import shutil
import subprocess

import pytest

from tests.conftest import REPO


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is installed by .[test]")
@pytest.mark.parametrize("command", [["ruff", "check", "."], ["ruff", "format", "--check", "."]])
def test_ruff(command):
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]


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
