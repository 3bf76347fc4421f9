"""Entry-script plumbing: one-line errors with exit codes, and config-choice checks before Hydra."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from blockcert.errors import BlockCertError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


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
    for name in ("transformers", "lightning.pytorch.utilities.rank_zero", "wandb"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
