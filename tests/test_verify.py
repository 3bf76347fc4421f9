"""A skeptic's attacks on certificates: every forged, re-hashed artifact is rejected (exit 3).

Each attack edits one thing in a copy of a real tiny_llama run, then re-hashes every file and
re-seals the certificate, as a forger would; the verifier must still name the file and field.
"""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file, save_file

import blockcert.compose.chain as chain
from blockcert.cert.certificate import load_certificate, seal, write_certificate
from blockcert.certify import certify
from blockcert.errors import BoundViolationError, VerificationError
from blockcert.hashing import sha256_file, token_ids_sha256
from blockcert.surrogate.ir import GRAPH_FILE, WEIGHTS_FILE
from blockcert.verify.split import rebuild_split
from tests.conftest import CONF, load_teacher, run_script

TINY = [
    "data.n_train_prompts=16",
    "data.n_heldout_prompts=8",
    "data.seq_len=32",
    "logger=csv",
    "callbacks.certificate.lipschitz_prompts=2",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One reduced-capacity tiny_llama run of block 1 (coverage counts differ across tau)."""
    tmp = tmp_path_factory.mktemp("verify")
    proc = run_script(
        "train.py",
        "model=tiny_llama",
        "block=1",
        "surrogate.head_fraction=0.5",
        "surrogate.mlp_fraction=0.5",
        "trainer.max_epochs=1",
        "callbacks.certificate.taus_abs=[0.02,0.05,0.1,1.0]",
        f"runs_root={tmp}",
        f"cache.root={tmp}/cache",
        *TINY,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (cert,) = (tmp / "tiny_llama").rglob("certificate.json")
    return cert.parent


@pytest.fixture
def forged(tmp_path, run_dir):
    copy = tmp_path / "runs" / "block1"
    shutil.copytree(run_dir, copy)
    return copy


def _reseal(run: Path, graph=None, weights=None, tokens=None, cert=None) -> None:
    """Apply the edits, re-hash every file and re-seal the certificate."""
    certificate = load_certificate(run / "certificate.json")
    if graph is not None:
        data = json.loads((run / GRAPH_FILE).read_text())
        graph(data)
        (run / GRAPH_FILE).write_text(json.dumps(data))
    if weights is not None:
        tensors = load_file(str(run / WEIGHTS_FILE))
        weights(tensors)
        save_file(tensors, str(run / WEIGHTS_FILE))
    if tokens is not None:
        ids = tokens(load_file(str(run / "heldout_tokens.safetensors"))["input_ids"])
        save_file({"input_ids": ids.contiguous()}, str(run / "heldout_tokens.safetensors"))
        data = certificate["data"]
        data.update(sha256=token_ids_sha256(ids), n_prompts=ids.shape[0], n_tokens=ids.numel())
        data["tokens_file_sha256"] = sha256_file(run / "heldout_tokens.safetensors")
    for name in (GRAPH_FILE, WEIGHTS_FILE):
        certificate["surrogate"]["files"][name] = sha256_file(run / name)
    if cert is not None:
        cert(certificate)
    body = {k: v for k, v in certificate.items() if k != "certificate_sha256"}
    write_certificate(run, seal(body))


def _certify(tmp_path, runs):
    overrides = [
        "model=tiny_llama",
        f"runs={runs}",
        f"out={tmp_path}/report",
        f"lean.root={tmp_path}/lean",
        "lean.build=false",
        "lipschitz.random_trials=1",
        "lipschitz.ascent_steps=1",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="certify", overrides=overrides)
    return certify(cfg)


def _node(data: dict, output: str) -> dict:
    return next(n for n in data["nodes"] if n["output"] == output)


def test_untouched_run_verifies(tmp_path, forged):
    _reseal(forged)  # re-hashing an honest run changes nothing
    result = _certify(tmp_path, forged.parent)
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
    _reseal(forged, graph=edit)
    with pytest.raises(VerificationError, match="surrogate IR node") as err:
        _certify(tmp_path, forged.parent)
    assert named in str(err.value) and "certificate.json" in str(err.value)


def test_wrong_weight_shape_is_rejected(tmp_path, forged):
    _reseal(forged, weights=lambda w: w.update({"q.weight": w["q.weight"][:-1].clone()}))
    with pytest.raises(VerificationError, match="node 'q'"):
        _certify(tmp_path, forged.parent)


def test_unreferenced_tensor_is_rejected(tmp_path, forged):
    _reseal(forged, weights=lambda w: w.update(extra=torch.zeros(3)))
    with pytest.raises(VerificationError, match="no node"):
        _certify(tmp_path, forged.parent)


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
    _reseal(forged, cert=edit)
    with pytest.raises(VerificationError, match=named):
        _certify(tmp_path, forged.parent)


def test_coverage_entry_for_every_claimed_tau_only(tmp_path, forged):
    _reseal(forged, cert=lambda c: c["metrics"]["coverage"].pop())
    with pytest.raises(VerificationError, match="coverage"):
        _certify(tmp_path, forged.parent)


def test_cherry_picked_heldout_prompts_are_rejected(tmp_path, forged):
    _reseal(forged, tokens=lambda ids: ids[:4])
    with pytest.raises(VerificationError, match="recorded data recipe"):
        _certify(tmp_path, forged.parent)


def test_training_prompts_as_heldout_are_rejected(tmp_path, forged, run_dir):
    cert = load_certificate(run_dir / "certificate.json")
    split = rebuild_split(cert["data"]["recipe"], load_teacher("tiny_llama").tokenizer, "test")
    _reseal(forged, tokens=lambda ids: split.train[: len(ids)])
    with pytest.raises(VerificationError, match="data.tokens_file"):
        _certify(tmp_path, forged.parent)


def test_forged_recipe_target_is_refused(tmp_path, forged):
    recipe = {"_target_": "os.system", "command": "true"}
    _reseal(forged, cert=lambda c: c["data"]["recipe"].update(corpus=recipe))
    with pytest.raises(VerificationError, match="data.recipe.corpus"):
        _certify(tmp_path, forged.parent)


def test_newest_certificate_is_chosen_by_path_not_by_claimed_time(tmp_path, forged):
    older = forged.parent / "a-older-run"  # sorts before block1
    shutil.copytree(forged, older)
    _reseal(older, cert=lambda c: c.update(created_at="2999-01-01T00:00:00+00:00"))
    result = _certify(tmp_path, forged.parent)
    assert result.report["certificates"]["1"] == str(forged / "certificate.json")


def test_forged_graph_exits_3_with_one_line_from_the_command_line(tmp_path, forged):
    _reseal(forged, graph=GRAPH_ATTACKS["duplicate_output"][0])
    proc = run_script(
        "certify.py",
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
        _certify(tmp_path, forged.parent)
    assert (tmp_path / "report" / "certify_report.json").is_file()  # written for inspection
