"""Where blockcert's configs and Lean library are, in a checkout and in an installed wheel alike.

The repository keeps them in its top-level `conf/` and `lean/` folders; the package ships them
as package data (`src/blockcert/conf` and `src/blockcert/lean` link to those folders in a
checkout), so the library finds them wherever it is installed.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

PACKAGE_DIR = Path(__file__).parent
CONF_DIR = PACKAGE_DIR / "conf"
LEAN_DIR = PACKAGE_DIR / "lean"
LEAN_INSTANCES = Path("BlockCert") / "Certificates"  # per-run instances, never shipped


def compose_config(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """conf/<name>.yaml with Hydra `overrides`, composed as the entry script would; inside a
    running entry point (edit.py re-certifying its run) that entry's Hydra state is put back."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    outer = get_gh_backup()
    GlobalHydra.instance().clear()  # Hydra allows one initialisation at a time
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name=name, overrides=list(overrides))
    finally:
        restore_gh_from_backup(outer)


def lean_project(target: Path) -> Path:
    """A copy of the Lean library (without any per-run instance) at `target`, to write and
    check a run's instance in; returns `target`."""
    target = Path(target)
    if target.exists():
        shutil.rmtree(target / LEAN_INSTANCES, ignore_errors=True)
    shutil.copytree(
        LEAN_DIR,
        target,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns(".lake", "Certificates", "*.olean", "*.ilean"),
    )
    return target
