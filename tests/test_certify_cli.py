"""certify.py end to end on tiny models: exactness, bound >= observed, tamper rejection."""

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from blockcert.cert.certificate import seal, write_certificate
from tests.conftest import run_script

TINY = [
    "data.n_train_prompts=16",
    "data.n_heldout_prompts=8",
    "data.seq_len=32",
    "trainer.max_epochs=3",
    "logger=csv",
    "lipschitz.empirical_prompts=2",
]
DEFERRED = [
    "surrogate.full_capacity=true",
    "lipschitz.sound_prompts=0",
    "lipschitz.empirical_prompts=0",
]
CERTIFY = [
    "lipschitz.random_trials=2",
    "lipschitz.ascent_steps=3",
    "lean.build=false",
    # the tiny data's pool (192 windows) holds these fresh prompts
    "verifier.n_prompts=8",
    "statistics.calibration_prompts=40",
    "statistics.check_prompts=20",
    "statistics.shift_prompts=4",
]


def _train(tmp, model, blocks, *extra):
    proc = run_script(
        "train.py",
        "-m",
        f"model={model}",
        f"block={blocks}",
        f"runs_root={tmp}",
        f"cache.root={tmp}/cache",
        *TINY,
        *extra,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / model


def _certify(tmp, model, runs, *extra):
    out = tmp / "report"
    proc = run_script(
        "certify.py",
        f"model={model}",
        f"runs={runs}",
        f"out={out}",
        f"lean.root={tmp}/lean",
        *CERTIFY,
        *extra,
    )
    report = None
    if (out / "certify_report.json").is_file():
        report = json.loads((out / "certify_report.json").read_text())
    return proc, report


@pytest.fixture(scope="module")
def full_capacity_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    return tmp, _train(tmp, "tiny_llama", "0,1,2,3", "surrogate.full_capacity=true")


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_gpt2"])
def test_full_capacity_stitched_model_is_exact(tmp_path, model, full_capacity_runs):
    options = ["lipschitz.sound_prompts=null"]  # every held-out prompt (default: the first 4)
    if model == "tiny_llama":
        tmp, runs = full_capacity_runs
        options.append("lipschitz.empirical_prompts=2")  # the comparison chain too
    else:  # train-time constants skipped (0 prompts): certify.py derives its own
        tmp, runs = tmp_path, _train(tmp_path, model, "0,1,2,3", *DEFERRED)
        paths = list(runs.rglob("certificate.json"))
        assert len(paths) == 4
        for path in paths:
            for lip in json.loads(path.read_text())["lipschitz"].values():
                assert lip["value"] is None and lip["parts"]["prompts"] == 0
    proc, report = _certify(tmp, model, runs, *options)
    assert proc.returncode == 0, proc.stderr[-3000:]
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
        assert (
            bound["empirical"] is None
            and "not computed (lipschitz.empirical_prompts=0)" in proc.stdout
        )
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
    assert list((tmp / "lean" / "BlockCert" / "Certificates").glob("C_*.lean"))
    assert "skipped" in report["lean"]["status"] or report["lean"]["status"] == "checked"


def test_reduced_capacity_bound_covers_every_token(tmp_path):
    runs = _train(
        tmp_path, "tiny_llama", "2,3", "surrogate.head_fraction=0.75", "surrogate.mlp_fraction=0.75"
    )
    proc, report = _certify(
        tmp_path,
        "tiny_llama",
        runs,
        "lipschitz.tube_shells=3",
        "lipschitz.joint_tokens=null",
        "lipschitz.empirical_prompts=2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
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
    (cert_path,) = [p for p in copy.rglob("certificate.json") if "block1-" in str(p)]
    return tmp_path, copy, cert_path


def _assert_rejected(proc, *words):
    assert proc.returncode == 3, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    for word in words:
        assert word in lines[0]


def test_flipped_weight_byte_is_rejected(tamper_copy):
    tmp, runs, cert_path = tamper_copy
    weights = cert_path.parent / "surrogate.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    proc, report = _certify(tmp, "tiny_llama", runs)
    _assert_rejected(proc, "surrogate.safetensors", "surrogate.files")
    assert report is None


def test_edited_eps_max_is_rejected(tamper_copy):
    tmp, runs, cert_path = tamper_copy
    cert = json.loads(cert_path.read_text())
    cert["metrics"]["eps_max"] = cert["metrics"]["eps_max"] + 1.0
    cert_path.write_text(json.dumps(cert))
    proc, _ = _certify(tmp, "tiny_llama", runs)
    _assert_rejected(proc, "certificate_sha256", str(cert_path))


def test_forged_eps_max_with_valid_hash_is_rejected(tamper_copy):
    tmp, runs, cert_path = tamper_copy
    cert = json.loads(cert_path.read_text())
    cert["metrics"]["eps_max"] = cert["metrics"]["eps_max"] + 0.5
    write_certificate(cert_path.parent, seal({k: v for k, v in cert.items()}))
    proc, _ = _certify(tmp, "tiny_llama", runs)
    _assert_rejected(proc, "metrics.eps_max", "recomputed")


def test_swapped_data_is_rejected(tamper_copy):
    tmp, runs, cert_path = tamper_copy
    tokens = cert_path.parent / "heldout_tokens.safetensors"
    ids = load_file(str(tokens))["input_ids"]
    save_file({"input_ids": ids.flip(0).contiguous()}, str(tokens))
    proc, _ = _certify(tmp, "tiny_llama", runs)
    _assert_rejected(proc, "heldout_tokens.safetensors", "data.tokens_file_sha256")


def test_verifier_prompts_and_fresh_prompt_statistics(tmp_path):
    """prompts=stress and the statistics (joint statement, opt-in compositional one) on a
    reduced run: every section reaches the report, the sound bound covers the stress prompts,
    and the untouched check split stays within the stated miss rate's binomial slack."""
    runs = _train(
        tmp_path,
        "tiny_llama",
        "2,3",
        "surrogate.head_fraction=0.75",
        "surrogate.mlp_fraction=0.75",
        "data.n_heldout_prompts=24",
    )
    proc, report = _certify(
        tmp_path,
        "tiny_llama",
        runs,
        "prompts=stress",
        "statistics.compositional.enabled=true",
        "statistics.lengths=mixed",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    prompts = report["prompts"]
    assert prompts["table"] and "certificate prompts" in "\n".join(prompts["table"])
    stats, fresh = report["statistics"], report["fresh"]
    assert not stats["teacher_model"] and stats["statement"]["n"] == 40
    assert "lengths uniform in [16, 32] tokens" in stats["statement"]["statement"]
    assert {s: v["n_prompts"] for s, v in fresh["splits"].items()} == {
        "own": 8,
        "calibration": 40,
        "check": 20,
    }
    assert stats["check"]["n"] == 20 and stats["check"]["within"]
    assert set(stats["shift"]) == {"stress set", "King James Bible"}
    comp = stats["compositional"]
    assert comp["informative"] is False or comp["check"]["within"]
    assert "with confidence 0.99, a fresh prompt" in proc.stdout
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    proc, _ = _certify(tmp_path, "tiny_llama", runs, f"prompts={empty}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.strip().splitlines() if line.strip()]) == 1
    for option in (
        "lipschitz.sound_prompts=0",
        "lipschitz.tube_shells=0",
        "lipschitz.refine_tokens=0",
        "lipschitz.joint_tokens=-1",
        "lipschitz.empirical_prompts=-1",
        "lipschitz.targeted_tokens=-1",
    ):
        proc, _ = _certify(tmp_path, "tiny_llama", runs, option)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert option.split("=")[0] in proc.stderr.strip().splitlines()[-1]
