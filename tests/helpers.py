"""How tests run blockcert: in-process through the same config composition the entry points
use (conf/ with debug=tiny), and as a subprocess only where the command line is under test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig

from blockcert.resources import compose_config

REPO = Path(__file__).resolve().parents[1]


def train_config(tmp: Path, *overrides: str) -> DictConfig:
    """conf/train.yaml with debug=tiny, the run in tmp/run and the pair cache in tmp/cache."""
    return compose_config(
        "train", ["debug=tiny", f"run_dir={tmp}/run", f"cache.root={tmp}/cache", *overrides]
    )


def train_in_process(tmp: Path, *overrides: str):
    """train(cfg) as `python train.py debug=tiny ...` runs it; returns its TrainResult."""
    from blockcert.train import train

    return train(train_config(tmp, *overrides))


def certify_config(tmp: Path, runs: Path, *overrides: str) -> DictConfig:
    """conf/certify.yaml with debug=tiny, the report in tmp/report, no Lean build."""
    return compose_config(
        "certify",
        ["debug=tiny", f"runs={runs}", f"out={tmp}/report", "lean.build=false", *overrides],
    )


def certify_in_process(tmp: Path, runs: Path, *overrides: str):
    """certify(cfg) as `python certify.py debug=tiny ...` runs it; returns its CertifyResult."""
    from blockcert.certify import certify

    return certify(certify_config(tmp, runs, *overrides))


def edit_in_process(tmp: Path, *overrides: str) -> Path:
    """edit(cfg) and its report as `python edit.py debug=tiny ...` writes them (wandb off);
    returns the edit's run directory, tmp/edit."""
    from blockcert.edit.pipeline import edit
    from blockcert.edit.report import write_edit_report

    run_dir = tmp / "edit"
    cfg = compose_config(
        "edit",
        [
            "debug=tiny",
            f"run_dir={run_dir}",
            f"cache.root={tmp}/cache",
            "wandb.mode=disabled",
            *overrides,
        ],
    )
    write_edit_report(edit(cfg), run_dir)
    return run_dir


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
