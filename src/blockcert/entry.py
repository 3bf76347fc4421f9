"""The command-line entry points: train, certify, edit (Hydra mains over conf/).

The repository's train.py, certify.py and edit.py call these, and an installed package offers
them as `blockcert-train`, `blockcert-certify` and `blockcert-edit`; Hydra reads the configs
shipped in the package (blockcert/conf), so both work the same with or without a checkout.
Each checks its command line first (`cli.preflight`: one line, exit 2), then runs; library
code returns lines and raises project errors, which `cli.one_line_errors` prints as one line
with the error's exit code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from blockcert.allocator import keep_freed_memory
from blockcert.cli import one_line_errors, preflight, quiet_libraries, quote_blocks
from blockcert.resources import CONF_DIR

# Keys a user types at the command line, with the type the run needs (checked before loading).
TRAIN_TYPES = {
    "block": int,
    "seed": int,
    "stage": str,
    "data.seq_len": int,
    "data.n_train_prompts": int,
    "data.n_heldout_prompts": int,
    "data.batch_size": int,
    "data.seed": int,
    "surrogate.full_capacity": bool,
    "surrogate.head_fraction": float,
    "surrogate.mlp_fraction": float,
    "surrogate.rank_fraction": float,
    "surrogate.importance_batches": int,
    "trainer.max_epochs": int,
    "optim.lr": float,
    "optim.weight_decay": float,
    "optim.max_aware_weight": float,
    "optim.topk_fraction": float,
    "optim.warmup_fraction": float,
    "cache.enabled": bool,
    "compress.budget.mlp_fraction": float,
    "compress.budget.param_fraction": float,
    "compress.budget.head_fraction": float,
    "compress.budget.rank_fraction": float,
    "compress.allocation.prompts": int,
    "compress.allocation.kl_prompts": int,
    "compress.calibration.prompts": int,
    "compress.calibration.batch_size": int,
    "compress.e2e.prompts": int,
    "compress.e2e.batch_size": int,
    "compress.e2e.epochs": int,
    "compress.e2e.lr": float,
}
CERTIFY_TYPES = {
    "runs": str,
    "out": str,
    "corpus_path": str,
    "batch_size": int,
    "tolerance.eps_rel": float,
    "tolerance.eps_abs": float,
    "tolerance.coverage_fraction": float,
    "verifier.n_prompts": int,
    "verifier.alpha": float,
    "verifier.seed": int,
    "verifier.corpus": str,
    "statistics.enabled": bool,
    "statistics.confidence": float,
    "statistics.miss_rate": float,
    "statistics.calibration_prompts": int,
    "statistics.check_prompts": int,
    "lean.build": bool,
}
EDIT_TYPES = {
    "block": int,
    "seed": int,
    "edit.steps": int,
    "edit.lr": float,
    "edit.n_prefixes": int,
    "edit.memit_lambda": float,
    "edit.certify": bool,
}


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def train_main(cfg: DictConfig) -> float | None:
    """`blocks=` (all, [0,5,12], 'range(20,30)') certifies several blocks in one process from
    one teacher pass; `stage=capture` only caches their pairs; -m sweeps blocks or capacities."""
    keep_freed_memory()  # reuse large freed buffers (see blockcert/allocator.py)
    with one_line_errors():
        from blockcert.train import blocks_table, summary_lines, train

        result = train(cfg)
        if not result.runs:
            print(
                f"captured the pairs of blocks {result.blocks} ({result.teacher_prompts} prompts "
                f"through the teacher) under {cfg.cache.root}"
            )
            return None
        value = result.metric(cfg.optimized_metric)
    if cfg.blocks is None and result.compressed is None:
        print("\n".join(summary_lines(result.runs[0].certificate)))
        print(f"certificate: {cfg.run_dir}/certificate.json")
    else:
        print("\n".join(blocks_table(result.runs)))
        if result.compressed is not None:
            from blockcert.compress.summary import summary_lines as compressed_lines

            print("\n".join(compressed_lines(result.compressed)))
        print(f"certificates: {cfg.run_dir}/block*/certificate.json")
        print(f"compose them: python certify.py model={cfg.model.name} runs={cfg.run_dir}")
    return value


@hydra.main(config_path=str(CONF_DIR), config_name="certify", version_base="1.3")
def certify_main(cfg: DictConfig) -> None:
    """Verify certificates, compose the global bound, check it against the stitched model;
    exit 3 when a hash or claim does not verify, 4 when a sound bound is below the observed
    deviation."""
    keep_freed_memory()
    from blockcert.certify import certify
    from blockcert.certify_report import log_report_to_wandb

    with one_line_errors():
        result = certify(cfg)
    print("\n".join(result.lines))
    log_report_to_wandb(cfg, result.report)


def _model_args() -> list[str]:
    """The model choice and model.* overrides, to certify an edit on the same teacher."""
    hydra_cfg = HydraConfig.get()
    overrides = [o for o in hydra_cfg.overrides.task if o.startswith("model.")]
    return [f"model={hydra_cfg.runtime.choices['model']}", *overrides]


@hydra.main(config_path=str(CONF_DIR), config_name="edit", version_base="1.3")
def edit_main(cfg: DictConfig) -> float:
    """A ROME/MEMIT update of one block's MLP as a certified surrogate (runs/<model>/edits/)."""
    keep_freed_memory()
    from blockcert.edit.pipeline import edit
    from blockcert.edit.recertify import certified_figures, certify_edit
    from blockcert.edit.report import log_edit_to_wandb, write_edit_report

    run_dir = Path(cfg.run_dir)
    with one_line_errors():
        report = edit(cfg)
        if cfg.edit.certify:
            certified, seconds = certify_edit(run_dir, _model_args(), list(cfg.edit.certify_args))
            report["certify"] = certified_figures(certified, cfg.block, seconds)
        files = write_edit_report(report, run_dir)
    if cfg.wandb.mode != "disabled":
        log_edit_to_wandb(report, files, run_dir, cfg.wandb.project, cfg.wandb.mode)
    print(files[1].read_text().split("\n## ")[0].rstrip())
    print(f"edit report: {files[1]}")
    return float(report["certificate"]["eps_max"])


def train_cli() -> None:
    sys.argv[1:] = quote_blocks(sys.argv[1:])
    preflight("train", sys.argv[1:], TRAIN_TYPES)
    quiet_libraries()
    train_main()


def certify_cli() -> None:
    preflight("certify", sys.argv[1:], CERTIFY_TYPES)
    quiet_libraries()
    certify_main()


def edit_cli() -> None:
    preflight("edit", sys.argv[1:], EDIT_TYPES)
    quiet_libraries()
    edit_main()
