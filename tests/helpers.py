"""How tests run blockcert: in-process through the same config composition the entry points
use (conf/ with debug=tiny); the command-line entry points themselves in-process too
(`run_entry`), and as a new interpreter only where the script as a user starts it is under
test (`run_script`: each start imports torch, Lightning and transformers, ~7 s)."""

from __future__ import annotations

import contextlib
import io
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


def run_entry(entry: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python <entry>.py args` run in this process: the same entry function (blockcert.entry:
    preflight, Hydra, one-line errors), its stdout, stderr and exit code, as run_script returns
    them, without a new interpreter. The environment (and argv) is restored afterwards; glibc's
    allocator is left as it is (BLOCKCERT_MALLOC=system) so the test process keeps its own."""
    from blockcert import entry as entries

    main = {"train": entries.train_cli, "certify": entries.certify_cli, "edit": entries.edit_cli}
    saved_argv, saved_env = sys.argv, dict(os.environ)
    os.environ.update(
        {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "BLOCKCERT_MALLOC": "system"}
    )
    os.environ.update(env or {})
    sys.argv = argv = [str(REPO / f"{entry}.py"), *args]
    stdout, stderr, code = io.StringIO(), io.StringIO(), 0
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            main[entry]()
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(argv, code, stdout.getvalue(), stderr.getvalue())
