"""Entry-script plumbing: one-line errors with exit codes, checks of the command line before
Hydra and of value types after it, and the config resolvers the entry configs use.

Importing this module registers the resolvers (also in a launcher's worker process, which
imports it when it unpickles an entry's main)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from blockcert.errors import BlockCertError
from blockcert.resources import CONF_DIR

_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def run_group(blocks, block) -> str:
    """The run directory level of a train run: `block<K>` for `block=K`, `blocks` for blocks=."""
    return f"block{block}" if blocks is None else "blocks"


OmegaConf.register_new_resolver("blockcert.run_group", run_group, replace=True)


def quote_blocks(argv: list[str]) -> list[str]:
    """Outside multirun, pass `blocks=range(a,b)` and `blocks=0,5,12` on as strings.

    Hydra reads both as sweeps, which a single run refuses; `blocks=` parses the strings itself
    (blockcert.capture.blocks). With -m they stay sweeps: one job per value.
    """
    if "-m" in argv or "--multirun" in argv:
        return argv
    quoted = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if key == "blocks" and sep and (value.startswith("range(") or "," in value):
            if not value.startswith(("[", "'", '"')):
                arg = f"blocks='{value}'"
        quoted.append(arg)
    return quoted


def check_types(cfg: DictConfig, types: dict[str, type]) -> None:
    """One-line error (exit 2) for the first key of `types` whose value has another type.

    Hydra keeps `block=abc` as a string; without this the run fails much later, deep inside.
    A null value passes (keys may be optional); an int passes for a float.
    """
    for key, kind in types.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            continue
        allowed = (int, float) if kind is float else (kind,)
        if isinstance(value, allowed) and (kind is bool or not isinstance(value, bool)):
            continue
        raise BlockCertError(
            f"{key}={value!r} must be {_TYPE_NAMES[kind]}, not a {type(value).__name__}."
        )


def check_choices(argv: list[str], conf_dir: Path = CONF_DIR) -> None:
    """Turn `group=name` overrides naming no config file into a one-line error (exit 2)."""
    for arg in argv:
        group, sep, choice = arg.lstrip("+~").partition("=")
        if not sep or "." in group or not (conf_dir / group).is_dir():
            continue
        for name in choice.split(","):
            if name and not (conf_dir / group / f"{name}.yaml").is_file():
                known = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
                print(
                    f"error: unknown {group} {name!r}; choose one of: {', '.join(known)}",
                    file=sys.stderr,
                )
                raise SystemExit(2)


def _overrides(argv: list[str]) -> list[str]:
    """The config overrides among the command-line arguments (not Hydra's own flags)."""
    return [a for a in argv if not a.startswith("-") and not a.lstrip("+~").startswith("hydra")]


def preflight(
    config_name: str, argv: list[str], types: dict[str, type], conf_dir: Path = CONF_DIR
) -> None:
    """Compose the entry's config from the command line as Hydra will, before Hydra runs.

    A group choice naming no file, an override naming no key (`block=abc` for certify.py), a
    value of the wrong type or an `out=` that is an existing file is one line and exit 2,
    never Hydra's traceback. A multirun (-m) is only checked for its group choices: its sweep
    values are not single values.
    """
    check_choices(argv, conf_dir)
    if "-m" in argv or "--multirun" in argv:
        return
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=_overrides(argv))
    except Exception as err:  # Hydra's override and composition errors
        message = " ".join(str(err).split())
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        check_types(cfg, types)
        out = OmegaConf.select(cfg, "out", default=None)
        if out is not None and Path(str(out)).exists() and not Path(str(out)).is_dir():
            raise BlockCertError(f"out={out!r} is an existing file; give a directory.")
    except BlockCertError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None


def _project_error(err: BaseException) -> BlockCertError | None:
    """The BlockCertError behind `err`, also when a library (Hydra's instantiate) wrapped it."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, BlockCertError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Print a BlockCertError as one line and exit with its code (2 bad input, 3, 4)."""
    try:
        yield
    except Exception as err:
        cause = _project_error(err)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        raise SystemExit(cause.exit_code) from None
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def quiet_libraries() -> None:
    """Keep the terminal to progress and results: silence library chatter, not our errors."""
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not sys.stderr.isatty():  # GGUF de-quantisation's tqdm bar floods log files
        os.environ.setdefault("TQDM_DISABLE", "1")
    # Lightning advice that does not apply here: pair datasets are read in-process (no
    # workers), and a tiny run has fewer batches than the logging interval.
    for message in (
        r".*`IterableDataset` has `__len__` defined",
        r".*smaller than the logging interval",
        r".*isinstance\(treespec, LeafSpec\)` is deprecated",
    ):
        warnings.filterwarnings("ignore", message=message)
    for name in ("transformers", "lightning.pytorch.utilities.rank_zero", "wandb"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
