"""blockcert as a library installed from its wheel (not editable), used outside the checkout:
the configs and the Lean library ship inside the package, the entry points run, and the
stitched model loads and generates."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

TRAIN = [
    "model=tiny_llama",
    "block=1",
    "data.n_train_prompts=16",
    "data.n_heldout_prompts=8",
    "data.seq_len=32",
    "surrogate.mlp_fraction=0.5",
    "trainer.max_epochs=1",
    "logger=csv",
]
CERTIFY = [
    "model=tiny_llama",
    "verifier.n_prompts=8",
    "statistics.calibration_prompts=40",
    "statistics.check_prompts=20",
    "statistics.shift_prompts=4",
]
# One interpreter runs the installed entry functions the console scripts call (train, then
# certify) and loads and generates from the stitched model: each interpreter start imports
# torch, Lightning and transformers (~7 s).
SESSION = """
import json, sys, blockcert, blockcert.stitched as stitched
from blockcert.entry import certify_cli, train_cli
assert "site-packages" in blockcert.__file__, blockcert.__file__
runs, train_args, certify_args = sys.argv[1], *json.loads(sys.argv[2])
for name, main, args in [("train", train_cli, train_args), ("certify", certify_cli, certify_args)]:
    sys.argv = ["blockcert-" + name, *args]
    try:
        main()
    except SystemExit as done:
        assert not done.code, (name, done.code)
model, tokenizer = stitched.load(runs, model="tiny_llama")
ids = tokenizer("To be, or not", return_tensors="pt").input_ids
out = model.generate(ids, max_new_tokens=4, do_sample=False)
assert out.shape[1] == ids.shape[1] + 4
print("generated", out.shape[1] - ids.shape[1])
"""


def _run(args: list[str], cwd, env) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, " ".join(args) + "\n" + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv (system packages visible, blockcert NOT) with blockcert installed from its wheel."""
    tmp = tmp_path_factory.mktemp("installed")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp / "dist"),
            str(REPO),
        ],
        tmp,
        env,
    )
    (wheel,) = (tmp / "dist").glob("blockcert-*.whl")
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(tmp / "venv")], tmp, env)
    python = tmp / "venv" / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], tmp, env)
    return tmp, tmp / "venv" / "bin", env


def test_the_installed_wheel_trains_certifies_and_loads(installed):
    tmp, bin_dir, env = installed
    work = tmp / "elsewhere"  # outside the checkout: nothing of it on the path
    work.mkdir()
    runs = work / "runs"
    train = [*TRAIN, f"runs_root={runs}", f"cache.root={work}/cache"]
    certify = [*CERTIFY, f"runs={runs}/tiny_llama", f"out={work}/report"]
    args = json.dumps([train, certify])
    proc = _run([str(bin_dir / "python"), "-c", SESSION, str(runs / "tiny_llama"), args], work, env)
    assert "certificate:" in proc.stdout and "generated 4" in proc.stdout
    assert "with confidence 0.99, a fresh prompt" in proc.stdout
    assert (work / "report" / "lean" / "BlockCert" / "Certificates").is_dir()
    assert not (work / "lean").exists()  # the instance went to the report, not the cwd
    # the console scripts call those entry functions
    for script, function in [
        ("blockcert-train", "train_cli"),
        ("blockcert-certify", "certify_cli"),
    ]:
        text = (bin_dir / script).read_text()
        assert f"from blockcert.entry import {function}" in text, text
