"""The one place blockcert talks to W&B (train.py's certificates, certify.py's report, edits,
the Pareto front): a summary, tables and an artifact of files, per run.

Offline by default (WANDB_MODE, or the `mode` given); `wandb login` + WANDB_MODE=online syncs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path


def log_files(
    name: str,
    kind: str,
    files: Iterable[str | Path],
    summary: Mapping[str, object] | None = None,
    run=None,
    project: str = "blockcert",
    mode: str | None = None,
    tables: Mapping[str, tuple[list[str], list[list]]] | None = None,
    metadata: Mapping[str, object] | None = None,
) -> None:
    """Log `summary`, `tables` {key: (columns, rows)} and an artifact `name` of type `kind`.

    run: an open W&B run (e.g. a Lightning WandbLogger's experiment); without one, a run of
    job type `kind` is opened beside the first file and finished here.
    """
    import wandb

    files = [Path(f) for f in files]
    owned = run is None
    if owned:
        run = wandb.init(
            project=project,
            job_type=kind,
            name=name,
            dir=str(files[0].parent) if files else None,
            mode=mode or os.environ.get("WANDB_MODE", "offline"),
        )
    if summary:
        run.summary.update(dict(summary))
    for key, (columns, rows) in (tables or {}).items():
        run.log({key: wandb.Table(columns=columns, data=rows)})
    artifact = wandb.Artifact(name, type=kind, metadata=dict(metadata or {}))
    for file in files:
        artifact.add_file(str(file))
    run.log_artifact(artifact)
    if owned:
        run.finish()


def coverage_key(entry: Mapping) -> str:
    """`abs/prompt<=10` style name of a coverage entry."""
    return f"{entry['kind']}/{entry['unit']}<={entry['tau']:g}"
