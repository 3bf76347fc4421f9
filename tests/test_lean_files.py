"""The Lean project and the generated instance files, checked without a Lean toolchain.

CI has no Lean: these tests pin what can be checked from Python (module names, exact numbers,
the arithmetic `check_ok` will redo in the kernel, the absence of escape hatches). Kernel
checking itself is `cd lean && lake build`.
"""

import re
from fractions import Fraction
from pathlib import Path

import pytest

from blockcert.compose.bound import bound_trajectory
from blockcert.compose.rational import lean_rat_literal, round_up
from blockcert.errors import BlockCertError
from blockcert.prove.lean_instance import (
    module_name,
    render_lean_instance,
    write_lean_instance,
)

LEAN = Path(__file__).resolve().parents[1] / "lean"
HASH = "0123456789abcdef" + "f" * 48
EPS = [Fraction(1, 10), Fraction(1, 5), Fraction(3, 10)]
LIPS = [Fraction(2), Fraction(3, 2), Fraction(5, 4)]

_LITERAL = re.compile(
    r"\(-(?P<neg>.+)\)|\(\((?P<num>\d+) : Rat\) / (?P<den>\d+)\)|\((?P<int>\d+) : Rat\)"
)


def parse_rat(term: str) -> Fraction:
    """Inverse of `lean_rat_literal` (only the forms it writes)."""
    term = term.strip()
    match = _LITERAL.fullmatch(term)
    assert match, term
    if match["neg"]:
        return -parse_rat(match["neg"])
    if match["int"]:
        return Fraction(int(match["int"]))
    return Fraction(int(match["num"]), int(match["den"]))


def _rat_list(text: str, name: str) -> list[Fraction]:
    body = re.search(rf"^def {name} : List Rat := \[(.*?)\]$", text, re.S | re.M)
    assert body, name
    items = [item for item in re.split(r",\s*\n\s*", body.group(1).strip()) if item]
    return [parse_rat(item) for item in items]


def parse_instance(text: str) -> tuple[list[Fraction], list[Fraction], Fraction]:
    def rat_list(name: str) -> list[Fraction]:
        body = re.search(rf"^def {name} : List Rat := \[(.*?)\]$", text, re.S | re.M)
        assert body, name
        items = [item for item in re.split(r",\s*\n\s*", body.group(1).strip()) if item]
        return [parse_rat(item) for item in items]

    claimed = re.search(r"^def claimed : Rat := (.+)$", text, re.M)
    assert claimed
    return rat_list("eps"), rat_list("Ls"), parse_rat(claimed.group(1))


def test_lean_literals_elaborate_to_the_exact_rational():
    assert lean_rat_literal(Fraction(3)) == "(3 : Rat)"
    assert lean_rat_literal(Fraction(0)) == "(0 : Rat)"
    assert lean_rat_literal(Fraction(59, 80)) == "((59 : Rat) / 80)"
    assert lean_rat_literal(Fraction(-1, 2)) == "(-((1 : Rat) / 2))"
    assert lean_rat_literal(Fraction(-7)) == "(-(7 : Rat))"
    for q in [
        Fraction(59, 80),
        Fraction(-1, 2),
        Fraction(10**40 + 1, 3 * 10**30),
        round_up(1e-300),
    ]:
        assert parse_rat(lean_rat_literal(q)) == q


def test_generated_instance_holds_the_exact_numbers():
    claimed = Fraction(59, 80)
    provenance = {"block 0": "runs/x/certificate.json sha256=ab12", "kind": "sound"}
    text = render_lean_instance(HASH, EPS, LIPS, claimed, provenance)
    assert text.startswith("import BlockCert.Check\n")
    assert "namespace BlockCert.Certificates.C_0123456789abcdef\n" in text
    assert text.rstrip().endswith("end BlockCert.Certificates.C_0123456789abcdef")
    eps, lips, parsed_claimed = parse_instance(text)
    assert eps == EPS and lips == LIPS and parsed_claimed == claimed
    assert parsed_claimed >= bound_trajectory(eps, lips)[-1]
    assert "theorem num_blocks : eps.length = 3 := rfl" in text
    assert (
        "theorem check_ok : checkCertificate eps Ls As claimed = true := by decide +kernel" in text
    )
    assert "certified_deviation D f g x0 eps Ls As claimed check_ok herr hlip hsat" in text
    assert "theorem deviation_le " in text and "EMPIRICAL" not in text
    assert "--   block 0: runs/x/certificate.json sha256=ab12" in text
    assert "--   kind: sound" in text
    assert HASH in text


def test_claimed_may_exceed_the_exact_bound():
    claimed = round_up(float(Fraction(59, 80)) * (1 + 1e-9))
    eps, lips, parsed = parse_instance(render_lean_instance(HASH, EPS, LIPS, claimed, {}))
    assert parsed == claimed > bound_trajectory(eps, lips)[-1]


def test_provenance_cannot_escape_its_comment():
    text = render_lean_instance(
        HASH, EPS, LIPS, Fraction(59, 80), {"evil\nkey": "a -/ b /- c\ntheorem x : False"}
    )
    lines = text.splitlines()
    assert "--   evil key: a -/ b /- c theorem x : False" in lines
    assert not any(line.startswith("theorem x") for line in lines)


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


def test_write_lean_instance_places_the_module_where_lake_builds_it(tmp_path):
    path = write_lean_instance(tmp_path, HASH.upper(), EPS, LIPS, Fraction(59, 80), {"k": "v"})
    assert path == tmp_path / "BlockCert" / "Certificates" / "C_0123456789abcdef.lean"
    assert parse_instance(path.read_text())[0] == EPS
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_committed_examples_pass_the_arithmetic_check_ok_redoes():
    examples = sorted((LEAN / "BlockCert" / "Examples").glob("*.lean"))
    assert examples
    for path in examples:
        text = path.read_text()
        eps, lips, claimed = parse_instance(text)
        assert len(eps) == len(lips) > 0, path
        assert all(v >= 0 for v in eps), path
        sats = _rat_list(text, "As")
        assert len(sats) == len(eps), path
        lips_or_none = [None if v < 0 else v for v in lips]
        sats_or_none = [None if v < 0 else v for v in sats]
        assert bound_trajectory(eps, lips_or_none, sats_or_none)[-1] <= claimed, path
        assert f"theorem num_blocks : eps.length = {len(eps)} := rfl" in text
        namespace = f"BlockCert.Examples.{path.stem}"
        assert f"namespace {namespace}\n" in text and f"end {namespace}" in text


FORBIDDEN = re.compile(r"\b(sorry|axiom|admit|native_decide)\b")


def test_lean_tree_has_no_escape_hatches():
    files = [p for p in LEAN.rglob("*") if p.is_file()]
    assert any(p.name == "Composition.lean" for p in files)
    for path in files:
        text = path.read_bytes().decode("utf-8", errors="replace")
        found = FORBIDDEN.search(text)
        assert found is None, f"{path}: {found.group(0) if found else ''}"


def test_lean_project_is_pinned_and_core_only():
    assert (LEAN / "lean-toolchain").read_text().strip() == "leanprover/lean4:v4.35.0"
    lakefile = (LEAN / "lakefile.toml").read_text()
    assert 'globs = ["BlockCert.*"]' in lakefile and 'defaultTargets = ["BlockCert"]' in lakefile
    assert "require" not in lakefile.replace("no `require`", "")
    for path in LEAN.rglob("*.lean"):
        for line in path.read_text().splitlines():
            if line.startswith("import "):
                assert line.split()[1].startswith("BlockCert"), (path, line)


def test_root_module_imports_every_core_module():
    imports = set(re.findall(r"^import (\S+)$", (LEAN / "BlockCert.lean").read_text(), re.M))
    core = {f"BlockCert.{p.stem}" for p in (LEAN / "BlockCert").glob("*.lean")}
    assert (
        imports
        == core
        == {
            "BlockCert.RatOrder",
            "BlockCert.Bound",
            "BlockCert.Composition",
            "BlockCert.Check",
        }
    )


@pytest.mark.parametrize(
    ("module", "names"),
    [
        (
            "Bound",
            [
                "def bound ",
                "def rmin ",
                "def stepCore ",
                "def stepBound ",
                "theorem le_stepCore ",
            ],
        ),
        (
            "Composition",
            [
                "structure Dist ",
                "abbrev teacher ",
                "abbrev stitched ",
                "theorem bound_step_le ",
                "theorem stitched_dist_le_bound ",
            ],
        ),
        (
            "Check",
            [
                "def claimsOK ",
                "def checkCertificate ",
                "theorem claimsOK_sound ",
                "theorem checkCertificate_sound",
                "theorem certified_deviation ",
            ],
        ),
    ],
)
def test_lean_modules_state_the_documented_theorems(module, names):
    text = (LEAN / "BlockCert" / f"{module}.lean").read_text()
    for name in names:
        assert name in text, (module, name)


def test_saturation_and_unclaimed_constants_are_written_for_lean():
    lips = [Fraction(2), None, Fraction(5, 4)]
    sats = [Fraction(1), Fraction(1, 2), None]
    claimed = bound_trajectory(EPS, lips, sats)[-1]
    text = render_lean_instance(HASH, EPS, lips, claimed, {"kind": "sound"}, saturation=sats)
    assert _rat_list(text, "Ls") == [Fraction(2), Fraction(-1), Fraction(5, 4)]
    assert _rat_list(text, "As") == [Fraction(1), Fraction(1, 2), Fraction(-1)]
    with pytest.raises(BlockCertError, match="below the exact B_L"):
        render_lean_instance(HASH, EPS, lips, claimed - Fraction(1, 10**6), {}, saturation=sats)


def test_empirical_instances_do_not_read_as_guarantees():
    text = render_lean_instance(HASH, EPS, LIPS, Fraction(59, 80), {"kind": "empirical"})
    assert "theorem deviation_le_empirical " in text and "EMPIRICAL" in text
    assert "theorem deviation_le " not in text
