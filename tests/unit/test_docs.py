"""The documentation builds, and every project file it names exists.

`mkdocs build --strict` fails on a broken link or anchor between pages, a page missing from the
nav, or a missing snippet (mkdocs.yml); the path checks catch a renamed script, config or module
that a page or the README still names.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [REPO / "README.md", *DOCS]

# what other modules link to: docs/soundness.md#<anchor>
SOUNDNESS_SECTIONS = [
    "Distance and composition",
    "Folded block and norm factors",
    "Attention rows",
    "Joint attention rows",
    "Gated MLP",
    "MLP bilinear tube term",
    "Tube shells",
    "Saturation",
    "Empirical estimate",
    "Floating point",
    "Transcoder",
]

PROJECT_DIRS = (".ci", "bench", "conf", "docs", "lean", "src", "sweeps", "tests")
PATH = re.compile(
    r"(?<![\w/.~-])((?:" + "|".join(re.escape(d) for d in PROJECT_DIRS) + r")/[^\s`'\"(),;]*)"
)
MODULE = re.compile(r"(?<![\w.])(blockcert(?:\.\w+)+)")
CODE = re.compile(r"```.*?```|`[^`\n]+`", re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def code_spans(text: str) -> list[str]:
    """Inline code spans and fenced blocks: where commands and paths are written."""
    return CODE.findall(text)


def named_paths(text: str) -> set[str]:
    """Project paths written in code (bench/x.py, conf/x.yaml, src/blockcert/..., lean/...)."""
    found = set()
    for span in code_spans(text):
        for path in PATH.findall(span):
            found.add(path.rstrip(".:"))
    return found


def path_exists(path: str) -> bool:
    """A placeholder segment (<hash>) or a glob needs only the folder before it to exist."""
    parts = path.rstrip("/").split("/")
    for i, part in enumerate(parts):
        if "<" in part or "*" in part:
            return (REPO.joinpath(*parts[:i])).is_dir()
    return (REPO / path).exists()


def module_exists(dotted: str) -> bool:
    """blockcert.a.b is a module or package, or blockcert.a.b.Name an attribute of one."""
    parts = dotted.split(".")
    for end in (len(parts), len(parts) - 1):
        base = REPO / "src" / Path(*parts[:end])
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            return True
    return False


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_named_project_paths_exist(page):
    text = page.read_text()
    missing = sorted(p for p in named_paths(text) if not path_exists(p))
    # bench scripts named anywhere, prose included
    missing += sorted(
        s for s in set(re.findall(r"bench/[\w-]+\.(?:py|sh)", text)) if not (REPO / s).is_file()
    )
    modules = {m for span in code_spans(text) for m in MODULE.findall(span)}
    missing += sorted(m for m in modules if not module_exists(m))
    assert not missing, f"{page.name} names what does not exist: {missing}"


def test_path_checks_catch_a_renamed_file():
    """The checks above can fail: a renamed script, config or module is reported."""
    text = "run `python bench/bench_gone.py` with `conf/gone.yaml` or `blockcert.gone.module`"
    assert named_paths(text) == {"bench/bench_gone.py", "conf/gone.yaml"}
    assert not path_exists("bench/bench_gone.py")
    assert path_exists("lean/BlockCert/Certificates/C_<hash>.lean")
    assert not path_exists("lean/Gone/C_<hash>.lean")
    assert module_exists("blockcert.cert.lipschitz_sound")
    assert module_exists("blockcert.stitched.load")
    assert not module_exists("blockcert.gone.module")


def test_readme_links_resolve():
    """README.md is not part of the site: its relative links are checked here."""
    text = (REPO / "README.md").read_text()
    targets = [t for t in LINK.findall(text) if "://" not in t]
    assert targets, "the README links into docs/"
    missing = [t for t in targets if not (REPO / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_readme_is_a_map():
    """At most 150 lines, and its test command is the one CI runs verbatim."""
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in readme.splitlines()


def test_soundness_page_has_the_linked_sections():
    text = (REPO / "docs" / "soundness.md").read_text()
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings == SOUNDNESS_SECTIONS


def test_mkdocs_build_strict(tmp_path):
    """The site builds with --strict from any working directory (links, anchors, nav, snippets)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict"]
        + ["-f", str(REPO / "mkdocs.yml"), "-d", str(site)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    built = {p.parent.name for p in site.glob("*/index.html")}
    assert built >= {p.stem for p in DOCS if p.stem != "index"}
    soundness = (site / "soundness" / "index.html").read_text()
    for section in SOUNDNESS_SECTIONS:
        anchor = re.sub(r"[^a-z0-9]+", "-", section.lower()).strip("-")
        assert f'id="{anchor}"' in soundness
