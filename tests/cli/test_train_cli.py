"""train.py end to end as a user runs it, and its one-line errors.

The entry function runs in-process (run_entry); the SmolLM2 smoke run starts train.py as a
user does (run_script)."""

import time

from blockcert.verify.collect import load_certificate
from tests.helpers import run_entry, run_script

TINY = ["debug=tiny", "trainer.max_epochs=2", "lipschitz.empirical_prompts=2"]


def _one_line_error(proc, code, *words):
    assert proc.returncode == code, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: ")
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0]


def test_tiny_llama_run_writes_a_valid_certificate(tmp_path):
    proc = run_entry(
        "train",
        *TINY,
        "block=1",
        f"runs_root={tmp_path}",
        f"cache.root={tmp_path}/cache",
        "lipschitz.sound_prompts=2",
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


def test_negative_lipschitz_prompt_count_is_one_line(tmp_path):
    proc = run_entry("train", *TINY, f"runs_root={tmp_path}", "lipschitz.sound_prompts=-1")
    _one_line_error(proc, 2, "lipschitz.sound_prompts=-1", "whole number >= 0")
    assert not list(tmp_path.rglob("certificate.json"))


def test_block_out_of_range_is_one_line(tmp_path):
    proc = run_entry("train", *TINY, "block=99", f"runs_root={tmp_path}")
    _one_line_error(proc, 2, "block=99", "out of range")
    assert not list(tmp_path.rglob("certificate.json"))


def test_block_of_the_wrong_type_is_one_line(tmp_path):
    proc = run_entry("train", "model=tiny_llama", "block=abc", f"runs_root={tmp_path}")
    _one_line_error(proc, 2, "block='abc'", "must be an integer")
    proc = run_entry("train", "model=tiny_llama", "blocks=abc", f"runs_root={tmp_path}")
    _one_line_error(proc, 2, "blocks='abc'", "blocks=all")
    assert not list(tmp_path.rglob("certificate.json"))


def test_unknown_model_is_one_line(tmp_path):
    proc = run_entry("train", "model=nosuchmodel", f"runs_root={tmp_path}")
    _one_line_error(proc, 2, "nosuchmodel", "smollm2")


def _empty_hub_cache(monkeypatch, tmp_path, offline: bool):
    """The hub as a fresh machine without access sees it: an empty local cache, and either
    HF_HUB_OFFLINE or an endpoint nothing answers on (huggingface_hub reads its environment
    once, at import, so the test sets the constants it read)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")


def test_hub_model_offline_is_one_line(tmp_path, monkeypatch):
    _empty_hub_cache(monkeypatch, tmp_path, offline=True)
    proc = run_entry("train", "model=tinyllama", "block=12", f"runs_root={tmp_path}")
    _one_line_error(
        proc, 2, "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "not in local cache", "model.path="
    )


def test_unreachable_hub_is_noticed_by_one_probe(tmp_path, monkeypatch):
    """No HF_HUB_OFFLINE: one probe of the (unreachable) endpoint, no retries, one line."""
    _empty_hub_cache(monkeypatch, tmp_path, offline=False)
    proc = run_entry("train", "model=tinyllama", f"runs_root={tmp_path}")
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


def test_smollm2_smoke_run(tmp_path):
    """The real embedded model end to end, with a tiny token budget (CI's smoke run): the
    train.py script certifies block 28, certify.py's entry verifies it, composes the chain,
    states what holds for fresh prompts and checks its Lean instance."""
    proc = run_script(
        "train.py",
        "block=28",
        f"runs_root={tmp_path}",
        f"cache.root={tmp_path}/cache",
        "data.n_train_prompts=8",
        "data.n_heldout_prompts=4",
        "data.seq_len=32",
        "data.batch_size=4",
        "trainer.max_epochs=1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = list(tmp_path.glob("smollm2/block28/*/certificate.json"))
    cert = load_certificate(path)
    assert cert["model"]["name"] == "smollm2" and cert["model"]["dtype"] == "float32"
    assert cert["metrics"]["n_tokens"] == 4 * 32
    assert list(path.parent.glob("wandb/offline-run-*"))
    proc = run_entry(  # certify.py's entry in-process: one interpreter start (~7 s) less
        "certify",
        f"runs={tmp_path}/smollm2",
        f"out={tmp_path}/report",
        "lipschitz.sound_prompts=1",
        "verifier.n_prompts=8",
        "statistics.calibration_prompts=40",
        "statistics.check_prompts=20",
        "statistics.shift_prompts=4",
        "statistics.shift=[kjv]",  # the stress set (13 s here) runs on tiny_llama in the fast tier
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for words in ("certified blocks          1 of 30", "a fresh prompt", "lean"):
        assert words in proc.stdout
    assert (tmp_path / "report" / "certify_report.html").is_file()
