"""Shared fixtures: tiny random teachers of each family and the embedded SmolLM2 teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from blockcert.models.adapters import adapter_for
from blockcert.models.load import load_teacher_by_name
from blockcert.resources import compose_config

REPO = Path(__file__).resolve().parents[1]
TIERS = ("unit", "integration", "cli")


def pytest_collection_modifyitems(items):
    """Mark each test with its tier, from its folder: `pytest -m unit` runs the unit tier."""
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


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


@pytest.fixture(scope="session")
def tiny_reduced_run(tmp_path_factory):
    """One reduced-capacity tiny_llama run of block 1 (coverage counts differ across tau); the
    attack tests edit copies of it."""
    from tests.forgery import TINY_TRAIN
    from tests.helpers import train_in_process

    tmp = tmp_path_factory.mktemp("tiny-run")
    (run,) = train_in_process(tmp, *TINY_TRAIN).runs
    return run.run_dir


@pytest.fixture
def forged(tmp_path, tiny_reduced_run):
    """A copy of the tiny run to forge: tmp_path/runs/block1."""
    import shutil

    copy = tmp_path / "runs" / "block1"
    shutil.copytree(tiny_reduced_run, copy)
    return copy
