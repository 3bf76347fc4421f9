"""A skeptic's attacks on certificates: every forged, re-hashed artifact is rejected (exit 3).

Each attack edits one thing in a copy of a real tiny_llama run, then re-hashes every file and
re-seals the certificate, as a forger would; the verifier must still name the file and field.
"""

import dataclasses
import shutil

import pytest
import torch

import blockcert.compose.chain as chain
from blockcert.errors import BoundViolationError, VerificationError
from blockcert.verify.collect import load_certificate
from blockcert.verify.split import rebuild_split
from tests.conftest import load_teacher
from tests.forgery import reseal
from tests.helpers import certify_in_process, run_entry


def _node(data: dict, output: str) -> dict:
    return next(n for n in data["nodes"] if n["output"] == output)


def test_untouched_run_verifies(tmp_path, forged):
    reseal(forged)  # re-hashing an honest run changes nothing
    result = certify_in_process(tmp_path, forged.parent)
    assert result.report["verification"]["status"] == "passed"
    assert result.report["certified_blocks"] == [1]


GRAPH_ATTACKS = {
    # a second writer of `out`: the first would be certified, the last executed
    "duplicate_output": (
        lambda g: g["nodes"].append(
            {"op": "add", "inputs": ["x", "attn_out"], "output": "out", "weights": {}, "attrs": {}}
        ),
        "'out'",
    ),
    # residual add scaled by alpha with W_o rescaled by 1/alpha: same function, smaller "L"
    "alpha_on_add": (lambda g: _node(g, "resid_attn")["attrs"].update(alpha=2.0), "resid_attn"),
    "negative_eps": (lambda g: _node(g, "attn_norm")["attrs"].update(eps=-1e-3), "attn_norm"),
    "unknown_attr": (lambda g: _node(g, "q")["attrs"].update(transpose=True), "'q'"),
    "unknown_op": (lambda g: _node(g, "act").update(op="relu"), "'act'"),
    "zero_scale": (lambda g: _node(g, "attn")["attrs"].update(scale=0.0), "'attn'"),
    "capacity_lie": (lambda g: g["capacity"].update(mlp_width=1), "mlp_width"),
}


@pytest.mark.parametrize("attack", sorted(GRAPH_ATTACKS))
def test_forged_graph_is_rejected_naming_the_node(tmp_path, forged, attack):
    edit, named = GRAPH_ATTACKS[attack]
    reseal(forged, graph=edit)
    with pytest.raises(VerificationError, match="surrogate IR node") as err:
        certify_in_process(tmp_path, forged.parent)
    assert named in str(err.value) and "certificate.json" in str(err.value)


def test_wrong_weight_shape_is_rejected(tmp_path, forged):
    reseal(forged, weights=lambda w: w.update({"q.weight": w["q.weight"][:-1].clone()}))
    with pytest.raises(VerificationError, match="node 'q'"):
        certify_in_process(tmp_path, forged.parent)


def test_unreferenced_tensor_is_rejected(tmp_path, forged):
    reseal(forged, weights=lambda w: w.update(extra=torch.zeros(3)))
    with pytest.raises(VerificationError, match="no node"):
        certify_in_process(tmp_path, forged.parent)


def _swap_coverage_taus(cert: dict) -> None:
    """Reorder: give the first two absolute token entries each other's tau."""
    entries = [
        c for c in cert["metrics"]["coverage"] if c["kind"] == "abs" and c["unit"] == "token"
    ]
    pairs = zip(entries[:-1], entries[1:], strict=True)
    a, b = next((a, b) for a, b in pairs if a["covered"] != b["covered"])
    a["tau"], b["tau"] = b["tau"], a["tau"]


CLAIM_ATTACKS = {
    "reordered_coverage": (_swap_coverage_taus, "coverage"),
    "edited_fraction": (
        lambda c: c["metrics"]["coverage"][0].update(fraction=1.0 - 1e-3),
        "fraction",
    ),
    "edited_p99": (lambda c: c["metrics"].update(p99=c["metrics"]["p99"] + 1e-2), "metrics.p99"),
    "edited_rel_mean": (
        lambda c: c["metrics"].update(rel_mean=c["metrics"]["rel_mean"] + 1e-3),
        "rel_mean",
    ),
    "edited_params": (
        lambda c: c["surrogate"].update(params=c["surrogate"]["params"] - 1),
        "surrogate.params",
    ),
    "edited_miss_rate": (
        lambda c: c["metrics"]["coverage"][1].update(miss_rate_upper=0.0),
        "miss_rate_upper",
    ),
}


@pytest.mark.parametrize("attack", sorted(CLAIM_ATTACKS))
def test_forged_claim_is_rejected(tmp_path, forged, attack):
    edit, named = CLAIM_ATTACKS[attack]
    reseal(forged, cert=edit)
    with pytest.raises(VerificationError, match=named):
        certify_in_process(tmp_path, forged.parent)


def test_coverage_entry_for_every_claimed_tau_only(tmp_path, forged):
    reseal(forged, cert=lambda c: c["metrics"]["coverage"].pop())
    with pytest.raises(VerificationError, match="coverage"):
        certify_in_process(tmp_path, forged.parent)


def test_cherry_picked_heldout_prompts_are_rejected(tmp_path, forged):
    reseal(forged, tokens=lambda ids: ids[:4])
    with pytest.raises(VerificationError, match="recorded data recipe"):
        certify_in_process(tmp_path, forged.parent)


def test_training_prompts_as_heldout_are_rejected(tmp_path, forged, tiny_reduced_run):
    run_dir = tiny_reduced_run
    cert = load_certificate(run_dir / "certificate.json")
    split = rebuild_split(cert["data"]["recipe"], load_teacher("tiny_llama").tokenizer)
    reseal(forged, tokens=lambda ids: split.train[: len(ids)])
    with pytest.raises(VerificationError, match="data.tokens_file"):
        certify_in_process(tmp_path, forged.parent)


def test_forged_recipe_target_is_refused(tmp_path, forged):
    recipe = {"_target_": "os.system", "command": "true"}
    reseal(forged, cert=lambda c: c["data"]["recipe"].update(corpus=recipe))
    with pytest.raises(VerificationError, match="data.recipe.corpus"):
        certify_in_process(tmp_path, forged.parent)


def test_newest_certificate_is_chosen_by_path_not_by_claimed_time(tmp_path, forged):
    older = forged.parent / "a-older-run"  # sorts before block1
    shutil.copytree(forged, older)
    reseal(older, cert=lambda c: c.update(created_at="2999-01-01T00:00:00+00:00"))
    result = certify_in_process(tmp_path, forged.parent)
    assert result.report["certificates"]["1"] == str(forged / "certificate.json")


def test_forged_graph_exits_3_with_one_line_from_the_command_line(tmp_path, forged):
    reseal(forged, graph=GRAPH_ATTACKS["duplicate_output"][0])
    proc = run_entry(
        "certify",
        "model=tiny_llama",
        f"runs={forged.parent}",
        f"out={tmp_path}/report",
        "lean.build=false",
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "surrogate IR node 'out'" in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "report" / "certify_report.json").exists()


def test_a_broken_sound_constant_makes_certify_exit_4(tmp_path, forged, monkeypatch):
    """The bound >= observed check can fire: zero every sound L_k and a_k."""
    real = chain.sound_lipschitz

    def broken(*args, **kwargs):
        lip = real(*args, **kwargs)
        return dataclasses.replace(lip, value=0.0, parts={**lip.parts, "saturation": 0.0})

    monkeypatch.setattr(chain, "sound_lipschitz", broken)
    with pytest.raises(BoundViolationError, match="exceeds sound"):
        certify_in_process(tmp_path, forged.parent)
    assert (tmp_path / "report" / "certify_report.json").is_file()  # written for inspection
