"""blockcert as a library installed from its wheel (not editable), used outside the checkout:
the configs and the Lean library ship inside the package, the entry points run, and the
stitched model loads and generates."""

from __future__ import annotations

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
LOAD = """
import sys, blockcert, blockcert.stitched as stitched
assert "site-packages" in blockcert.__file__, blockcert.__file__
model, tokenizer = stitched.load(sys.argv[1], model="tiny_llama")
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
    _run(
        [str(bin_dir / "blockcert-train"), *TRAIN, f"runs_root={runs}", f"cache.root={work}/cache"],
        work,
        env,
    )
    proc = _run(
        [
            str(bin_dir / "blockcert-certify"),
            *CERTIFY,
            f"runs={runs}/tiny_llama",
            f"out={work}/report",
        ],
        work,
        env,
    )
    assert "with confidence 0.99, a fresh prompt" in proc.stdout
    assert (work / "report" / "lean" / "BlockCert" / "Certificates").is_dir()
    assert not (work / "lean").exists()  # the instance went to the report, not the cwd
    proc = _run([str(bin_dir / "python"), "-c", LOAD, str(runs / "tiny_llama")], work, env)
    assert "generated 4" in proc.stdout
