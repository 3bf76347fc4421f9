"""certify end to end on tiny models, in-process: exactness, bound >= observed, tamper
rejection, the verifier's prompts and the statements about fresh prompts."""

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from blockcert.cert.certificate import seal, write_certificate
from blockcert.errors import BlockCertError, VerificationError
from tests.helpers import certify_in_process, train_in_process

REDUCED = ["surrogate.head_fraction=0.75", "surrogate.mlp_fraction=0.75", "trainer.max_epochs=3"]


def _certify(tmp, model, runs, *extra):
    result = certify_in_process(tmp, runs, f"model={model}", *extra)
    return result, result.report


@pytest.fixture(scope="module")
def full_capacity_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    train_in_process(tmp, "blocks=[0,1,2,3]", "surrogate.full_capacity=true")
    return tmp, tmp / "run"


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_gpt2"])
def test_full_capacity_stitched_model_is_exact(tmp_path, model, full_capacity_runs):
    options = ["lipschitz.sound_prompts=null"]  # every held-out prompt (default: the first 4)
    if model == "tiny_llama":
        tmp, runs = full_capacity_runs
        options.append("lipschitz.empirical_prompts=2")  # the comparison chain too
    else:  # train-time constants skipped (the default): certify derives its own
        tmp, runs = tmp_path, tmp_path / "run"
        train_in_process(
            tmp_path, "model=tiny_gpt2", "blocks=[0,1,2,3]", "surrogate.full_capacity=true"
        )
        paths = list(runs.rglob("certificate.json"))
        assert len(paths) == 4
        for path in paths:
            for lip in json.loads(path.read_text())["lipschitz"].values():
                assert lip["value"] is None and lip["parts"]["prompts"] == 0
    result, report = _certify(tmp, model, runs, *options)
    stitched, bound = report["stitched"], report["bound"]
    assert report["certified_blocks"] == [0, 1, 2, 3]
    assert stitched["observed_final_max"] <= 1e-4
    assert bound["n_prompts"] == 8 and bound["observed"] == stitched["observed_final_max"]
    assert bound["claimed"] >= stitched["observed_final_max"]
    assert abs(stitched["ppl_delta"]) <= 1e-4 and stitched["top1_agreement"] == 1.0
    for row in report["blocks"]:
        if model == "tiny_llama":
            assert row["bound_empirical"] >= row["observed"]
        else:
            assert row["bound_empirical"] is None and row["lipschitz_empirical"] is None
        # tiny chains from eps ~ 0 stay far below the token norms: every pass runs
        assert row["lipschitz_sound_saturated"] is False
    if model == "tiny_gpt2":
        assert bound["empirical"] is None
        assert any("not computed (lipschitz.empirical_prompts=0)" in line for line in result.lines)
    stats = report["statistics"]
    if model == "tiny_llama":  # bit-identical blocks: the stitched model is the teacher
        assert stats["teacher_model"] and set(stats["statement"]["thresholds"].values()) == {0.0}
        assert stats["check"]["beyond"] == 0
    else:  # equal to 1e-4, not bit for bit: the statement is measured on fresh prompts
        assert not stats["teacher_model"]
        assert stats["statement"]["thresholds"]["final deviation"] <= 1e-3
    assert stats["check"]["within"]
    assert all(not row["flagged"] for row in report["own_split"]["blocks"])
    assert (tmp / "report" / "certify_report.md").is_file()
    assert len(list((tmp / "report").glob("*.png"))) == 3
    assert list((tmp / "report" / "lean" / "BlockCert" / "Certificates").glob("C_*.lean"))


def test_reduced_capacity_bound_covers_every_token(tmp_path):
    train_in_process(tmp_path, "blocks=[2,3]", *REDUCED)
    _, report = _certify(
        tmp_path,
        "tiny_llama",
        tmp_path / "run",
        "lipschitz.tube_shells=3",
        "lipschitz.joint_tokens=null",
        "lipschitz.empirical_prompts=2",
    )
    assert report["certified_blocks"] == [2, 3]
    bound = report["bound"]
    assert bound["tube_shells"] == 3 and bound["joint_tokens"] is None
    # the default sound chain covers the tubes of the first 4 of the 8 held-out prompts
    assert bound["n_prompts"] == 4 and "first 4 of 8" in bound["prompts"]
    assert 0 < bound["observed"] <= report["stitched"]["observed_final_max"]
    assert bound["claimed"] >= bound["observed"]
    for row in report["blocks"]:
        assert row["bound_empirical"] >= row["observed"]
        if row["bound_sound"] is not None:
            assert row["bound_sound"] >= row["observed"]


@pytest.fixture
def tamper_copy(tmp_path, full_capacity_runs):
    _, runs = full_capacity_runs
    copy = tmp_path / "tiny_llama"
    shutil.copytree(runs, copy)
    cert_path = copy / "block1" / "certificate.json"
    return tmp_path, copy, cert_path


def _rejected(tmp, runs, *words) -> None:
    with pytest.raises(VerificationError) as err:
        _certify(tmp, "tiny_llama", runs)
    line = str(err.value)
    assert "\n" not in line
    for word in words:
        assert word in line
    assert not (tmp / "report" / "certify_report.json").exists()


def test_flipped_weight_byte_is_rejected(tamper_copy):
    tmp, runs, cert_path = tamper_copy
    weights = cert_path.parent / "surrogate.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    _rejected(tmp, runs, "surrogate.safetensors", "surrogate.files")


def test_edited_eps_max_is_rejected(tamper_copy):
    tmp, runs, cert_path = tamper_copy
    cert = json.loads(cert_path.read_text())
    cert["metrics"]["eps_max"] = cert["metrics"]["eps_max"] + 1.0
    cert_path.write_text(json.dumps(cert))
    _rejected(tmp, runs, "certificate_sha256", str(cert_path))


def test_forged_eps_max_with_valid_hash_is_rejected(tamper_copy):
    tmp, runs, cert_path = tamper_copy
    cert = json.loads(cert_path.read_text())
    cert["metrics"]["eps_max"] = cert["metrics"]["eps_max"] + 0.5
    write_certificate(cert_path.parent, seal({k: v for k, v in cert.items()}))
    _rejected(tmp, runs, "metrics.eps_max", "recomputed")


def test_swapped_data_is_rejected(tamper_copy):
    tmp, runs, cert_path = tamper_copy
    tokens = cert_path.parent / "heldout_tokens.safetensors"
    ids = load_file(str(tokens))["input_ids"]
    save_file({"input_ids": ids.flip(0).contiguous()}, str(tokens))
    _rejected(tmp, runs, "heldout_tokens.safetensors", "data.tokens_file_sha256")


@pytest.fixture(scope="module")
def reduced_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reduced")
    train_in_process(tmp, "blocks=[2,3]", "data.n_heldout_prompts=24", *REDUCED)
    return tmp / "run"


@pytest.mark.slow
def test_verifier_prompts_and_fresh_prompt_statistics(tmp_path, reduced_runs):
    """prompts=stress and the statistics (joint statement, opt-in compositional one) on a
    reduced run: every section reaches the report, the sound bound covers the stress prompts,
    and the untouched check split stays within the stated miss rate's binomial slack."""
    result, report = _certify(
        tmp_path,
        "tiny_llama",
        reduced_runs,
        "prompts=stress",
        "statistics.compositional.enabled=true",
        "statistics.lengths=mixed",
        "statistics.shift=[stress,kjv]",
    )
    prompts = report["prompts"]
    assert prompts["table"] and "certificate prompts" in "\n".join(prompts["table"])
    stats, fresh = report["statistics"], report["fresh"]
    _assert_mixed_length_statement(stats, fresh)
    assert set(stats["shift"]) == {"stress set", "King James Bible"}
    comp = stats["compositional"]
    assert comp["informative"] is False or comp["check"]["within"]
    assert any("with confidence 0.99, a fresh prompt" in line for line in result.lines)


def _assert_mixed_length_statement(stats: dict, fresh: dict) -> None:
    """debug=tiny's splits (8 own, 40 calibration, 20 check) and a statement over mixed
    lengths whose untouched check split stays within its binomial slack."""
    assert not stats["teacher_model"] and stats["statement"]["n"] == 40
    assert "lengths uniform in [16, 32] tokens" in stats["statement"]["statement"]
    assert {s: v["n_prompts"] for s, v in fresh["splits"].items()} == {
        "own": 8,
        "calibration": 40,
        "check": 20,
    }
    assert stats["check"]["n"] == 20 and stats["check"]["within"]


def test_fresh_prompt_statement_on_a_reduced_run(tmp_path, reduced_runs):
    """The joint statement (mixed lengths) with its check split, the shift set beside it."""
    result, report = _certify(tmp_path, "tiny_llama", reduced_runs, "statistics.lengths=mixed")
    stats, fresh = report["statistics"], report["fresh"]
    _assert_mixed_length_statement(stats, fresh)
    assert set(stats["shift"]) == {"King James Bible"} and stats["compositional"] is None
    assert any("with confidence 0.99, a fresh prompt" in line for line in result.lines)


@pytest.mark.parametrize(
    "option",
    [
        "lipschitz.sound_prompts=0",
        "lipschitz.tube_shells=0",
        "lipschitz.refine_tokens=0",
        "lipschitz.joint_tokens=-1",
        "lipschitz.empirical_prompts=-1",
        "lipschitz.targeted_tokens=-1",
    ],
)
def test_bad_lipschitz_option_is_one_line(tmp_path, option):
    """Rejected before the model loads or any run is read (certify's first check)."""
    with pytest.raises(BlockCertError) as err:
        _certify(tmp_path, "tiny_llama", tmp_path / "no-runs", option)
    assert err.value.exit_code == 2 and option.split("=")[0] in str(err.value)


def test_empty_prompt_file_is_one_line(tmp_path, reduced_runs):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(BlockCertError) as err:
        _certify(tmp_path, "tiny_llama", reduced_runs, f"prompts={empty}")
    assert err.value.exit_code == 2 and "\n" not in str(err.value)
