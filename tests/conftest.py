"""Shared fixtures: tiny random teachers of each family and the embedded SmolLM2 teacher."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blockcert.models.adapters import adapter_for
from blockcert.models.load import load_teacher_by_name
from blockcert.resources import compose_config

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def model_config(name: str):
    return compose_config("train", [f"model={name}"]).model


def load_teacher(name: str):
    return load_teacher_by_name(name)


@pytest.fixture(scope="session")
def tiny_llama():
    return adapter_for(load_teacher("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_gpt2():
    return adapter_for(load_teacher("tiny_gpt2"))


@pytest.fixture(scope="session", params=["tiny_llama", "tiny_gpt2"])
def tiny_adapter(request):
    return adapter_for(load_teacher(request.param))


@pytest.fixture(scope="session")
def smollm2():
    return adapter_for(load_teacher("smollm2"))


@pytest.fixture
def token_ids():
    return torch.randint(0, 256, (3, 19), generator=torch.Generator().manual_seed(0))


def run_script(script: str, *args: str, env: dict | None = None, timeout: int = 900):
    """Run a top-level entry script as a user would; returns CompletedProcess."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})}
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def tiny_reduced_run(tmp_path_factory):
    """One reduced-capacity tiny_llama run of block 1 (coverage counts differ across tau); the
    attack tests edit copies of it."""
    from tests.forgery import TINY_TRAIN

    tmp = tmp_path_factory.mktemp("tiny-run")
    proc = run_script("train.py", *TINY_TRAIN, f"runs_root={tmp}", f"cache.root={tmp}/cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (cert,) = (tmp / "tiny_llama").rglob("certificate.json")
    return cert.parent


@pytest.fixture
def forged(tmp_path, tiny_reduced_run):
    """A copy of the tiny run to forge: tmp_path/runs/block1."""
    import shutil

    copy = tmp_path / "runs" / "block1"
    shutil.copytree(tiny_reduced_run, copy)
    return copy
