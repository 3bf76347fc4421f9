"""Certified local edit of one block: python edit.py block=K edit.prompt="..." edit.target="...".

Writes a ROME/MEMIT update of block K's MLP as a certified surrogate into
runs/<model>/edits/<time>/ (see README.md and conf/edit.yaml); `python certify.py runs=<that dir>`
composes it with every other block as the teacher (or set edit.certify=true).
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from blockcert.allocator import keep_freed_memory
from blockcert.cli import one_line_errors, preflight, quiet_libraries

# Keys a user types at the command line, with the type the run needs (checked before loading).
TYPES = {
    "block": int,
    "seed": int,
    "edit.steps": int,
    "edit.lr": float,
    "edit.n_prefixes": int,
    "edit.memit_lambda": float,
    "edit.certify": bool,
}


def _model_args() -> list[str]:
    """The model choice and model.* overrides, to run certify.py on the same teacher."""
    hydra_cfg = HydraConfig.get()
    overrides = [o for o in hydra_cfg.overrides.task if o.startswith("model.")]
    return [f"model={hydra_cfg.runtime.choices['model']}", *overrides]


@hydra.main(config_path="conf", config_name="edit", version_base="1.3")
def main(cfg: DictConfig) -> float:
    keep_freed_memory()  # reuse large freed buffers (see blockcert/allocator.py)
    from blockcert.edit.pipeline import edit
    from blockcert.edit.recertify import certified_figures, run_certify
    from blockcert.edit.report import log_edit_to_wandb, write_edit_report

    run_dir = Path(cfg.run_dir)
    with one_line_errors():
        report = edit(cfg)
        if cfg.edit.certify:
            certified, seconds = run_certify(run_dir, _model_args(), list(cfg.edit.certify_args))
            report["certify"] = certified_figures(certified, cfg.block, seconds)
        files = write_edit_report(report, run_dir)
    if cfg.wandb.mode != "disabled":
        log_edit_to_wandb(report, files, run_dir, cfg.wandb.project, cfg.wandb.mode)
    print(files[1].read_text().split("\n## ")[0].rstrip())
    print(f"edit report: {files[1]}")
    return float(report["certificate"]["eps_max"])


if __name__ == "__main__":
    preflight("edit", sys.argv[1:], TYPES)
    quiet_libraries()
    main()
