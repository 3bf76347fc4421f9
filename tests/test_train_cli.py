"""train.py end to end as a user runs it, and its one-line errors."""

import json
import time

import pytest

from blockcert.cert.lipschitz import LipschitzOptions
from blockcert.errors import BlockCertError
from blockcert.verify.collect import load_certificate
from tests.conftest import run_script

TINY = [
    "data.n_train_prompts=16",
    "data.n_heldout_prompts=8",
    "data.seq_len=32",
    "trainer.max_epochs=2",
    "logger=csv",
    "lipschitz.empirical_prompts=2",
]


def _one_line_error(proc, code, *words):
    assert proc.returncode == code, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: ")
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0]


def test_tiny_llama_run_writes_a_valid_certificate(tmp_path):
    proc = run_script(
        "train.py",
        "model=tiny_llama",
        "block=1",
        f"runs_root={tmp_path}",
        f"cache.root={tmp_path}/cache",
        "lipschitz.sound_prompts=2",
        *TINY,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = list(tmp_path.glob("tiny_llama/block1/*/certificate.json"))
    cert = load_certificate(path)
    assert cert["block"] == 1 and cert["model"]["family"] == "llama"
    assert cert["data"]["n_tokens"] == 8 * 32 and cert["metrics"]["n_tokens"] == 8 * 32
    assert cert["lipschitz"]["sound"]["kind"] == "sound"
    assert cert["lipschitz"]["sound"]["parts"]["prompts"] == 2  # lipschitz.sound_prompts=2
    assert cert["lipschitz"]["empirical"]["kind"] == "empirical"
    assert cert["surrogate"]["params"] < cert["surrogate"]["teacher_params"]
    for name in ("surrogate.json", "surrogate.safetensors", "heldout_tokens.safetensors"):
        assert (path.parent / name).is_file()
    assert "eps_max" in proc.stdout and "coverage" in proc.stdout
    assert not list(path.parent.glob(".*.tmp"))
    # stdout is a pipe here, as in `python train.py > log`: a line per stage and per epoch
    for line in ("setup: tiny_llama", "capture train: done", "capture heldout: done"):
        assert line in proc.stdout
    assert "block 1 epoch 1/2:" in proc.stdout and "block 1 epoch 2/2:" in proc.stdout
    assert "tokens/s" in proc.stdout and "val eps_max" in proc.stdout


def test_full_capacity_gpt2_is_exact(tmp_path):
    proc = run_script(
        "train.py",
        "model=tiny_gpt2",
        "block=2",
        "surrogate.full_capacity=true",
        f"runs_root={tmp_path}",
        f"cache.root={tmp_path}/cache",
        "lipschitz.sound_prompts=3",
        *TINY,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = list(tmp_path.glob("tiny_gpt2/block2/*/certificate.json"))
    cert = json.loads(path.read_text())
    assert cert["metrics"]["eps_max"] <= 1e-5
    sound = cert["lipschitz"]["sound"]["parts"]
    assert sound["prompts"] == 3 and sound["tokens"] == 3 * 32
    assert cert["surrogate"]["params"] == cert["surrogate"]["teacher_params"]


def test_lipschitz_prompt_counts_are_checked():
    LipschitzOptions.from_config({"empirical_prompts": 0, "sound_prompts": None})
    LipschitzOptions.from_config({"empirical_prompts": 3, "sound_prompts": 0})
    for key, bad in (
        ("empirical_prompts", None),
        ("sound_prompts", -2),
        ("empirical_prompts", True),
        ("tube_shells", 0),
    ):
        options = {"empirical_prompts": 1, "sound_prompts": 1, key: bad}
        with pytest.raises(BlockCertError, match=f"lipschitz.{key}="):
            LipschitzOptions.from_config(options)
    with pytest.raises(BlockCertError, match="lipschitz.shells is not a Lipschitz option"):
        LipschitzOptions.from_config({"shells": 2})


def test_negative_lipschitz_prompt_count_is_one_line(tmp_path):
    for key in ("sound_prompts", "empirical_prompts"):
        proc = run_script(
            "train.py",
            "model=tiny_llama",
            f"runs_root={tmp_path}",
            *TINY,
            f"lipschitz.{key}=-1",
        )
        _one_line_error(proc, 2, f"lipschitz.{key}=-1", "whole number >= 0")
    assert not list(tmp_path.rglob("certificate.json"))


def test_block_out_of_range_is_one_line(tmp_path):
    proc = run_script("train.py", "model=tiny_llama", "block=99", f"runs_root={tmp_path}", *TINY)
    _one_line_error(proc, 2, "block=99", "out of range")
    assert not list(tmp_path.rglob("certificate.json"))


def test_block_of_the_wrong_type_is_one_line(tmp_path):
    proc = run_script("train.py", "model=tiny_llama", "block=abc", f"runs_root={tmp_path}")
    _one_line_error(proc, 2, "block='abc'", "must be an integer")
    proc = run_script("train.py", "model=tiny_llama", "blocks=abc", f"runs_root={tmp_path}")
    _one_line_error(proc, 2, "blocks='abc'", "blocks=all")
    assert not list(tmp_path.rglob("certificate.json"))


def test_unknown_model_is_one_line(tmp_path):
    proc = run_script("train.py", "model=nosuchmodel", f"runs_root={tmp_path}")
    _one_line_error(proc, 2, "nosuchmodel", "smollm2")


def test_hub_model_offline_is_one_line(tmp_path):
    proc = run_script(
        "train.py",
        "model=tinyllama",
        "block=12",
        f"runs_root={tmp_path}",
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    _one_line_error(
        proc, 2, "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "not in local cache", "model.path="
    )


def test_unreachable_hub_is_noticed_by_one_probe(tmp_path):
    """No HF_HUB_OFFLINE: one probe of the (unreachable) endpoint, no retries, one line."""
    proc = run_script(
        "train.py",
        "model=tinyllama",
        f"runs_root={tmp_path}",
        env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")},
    )
    _one_line_error(proc, 2, "not in local cache and the hub is unreachable")


def test_hub_probe_is_quick(monkeypatch):
    from huggingface_hub import constants

    from blockcert.models.load import hub_reachable

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    start = time.perf_counter()
    assert not hub_reachable(timeout_s=2.0)
    assert time.perf_counter() - start < 5.0
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert not hub_reachable()


def test_empty_corpus_is_one_line_and_writes_nothing(tmp_path):
    corpus = tmp_path / "empty"
    corpus.mkdir()
    (corpus / "a.txt").write_text("")
    proc = run_script(
        "train.py",
        "model=tiny_llama",
        "block=0",
        "data=text",
        f"data.corpus.path={corpus}",
        f"runs_root={tmp_path}/runs",
        *TINY,
    )
    _one_line_error(proc, 2, "0 prompts")
    assert not list(tmp_path.rglob("certificate.json"))


def test_smollm2_smoke_run(tmp_path):
    """The real embedded model, end to end, with a tiny token budget (CI smoke run)."""
    proc = run_script(
        "train.py",
        "block=12",
        f"runs_root={tmp_path}",
        f"cache.root={tmp_path}/cache",
        "data.n_train_prompts=8",
        "data.n_heldout_prompts=4",
        "data.seq_len=32",
        "data.batch_size=4",
        "trainer.max_epochs=1",
        "lipschitz.empirical_prompts=2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = list(tmp_path.glob("smollm2/block12/*/certificate.json"))
    cert = load_certificate(path)
    assert cert["model"]["name"] == "smollm2" and cert["model"]["dtype"] == "float32"
    assert cert["metrics"]["n_tokens"] == 4 * 32
    assert list(path.parent.glob("wandb/offline-run-*"))
