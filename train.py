"""Certify residual blocks: python train.py [model=smollm2] [block=12 | blocks=all] [key=value ...].

`blocks=` (all, [0,5,12], 'range(20,30)') certifies several blocks in one process from one
teacher pass; `stage=capture` only caches their pairs, for a later `-m block=...` sweep with a
parallel launcher. Hydra multirun (-m) sweeps blocks or capacities; see README.md and
conf/train.yaml.
"""

import sys

import hydra
from omegaconf import DictConfig

from blockcert.allocator import keep_freed_memory
from blockcert.cli import one_line_errors, preflight, quiet_libraries, quote_blocks

# Keys a user types at the command line, with the type the run needs (checked before loading).
TYPES = {
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


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
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
            from blockcert.compress.summary import summary_lines

            print("\n".join(summary_lines(result.compressed)))
        print(f"certificates: {cfg.run_dir}/block*/certificate.json")
        print(f"compose them: python certify.py model={cfg.model.name} runs={cfg.run_dir}")
    return value


if __name__ == "__main__":
    sys.argv[1:] = quote_blocks(sys.argv[1:])
    preflight("train", sys.argv[1:], TYPES)
    quiet_libraries()
    main()
