"""Verify certificates, compose the global bound, check it against the stitched model.

python certify.py [model=smollm2] [runs=DIR] [out=DIR]; exit 3 when a hash or claim does not
verify, exit 4 when a sound bound is below the observed deviation. See README.md.
"""

import sys

import hydra
from omegaconf import DictConfig

from blockcert.allocator import keep_freed_memory
from blockcert.cli import one_line_errors, preflight, quiet_libraries

# Keys a user types at the command line, with the type the run needs (checked before loading).
TYPES = {
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
    "lean.build": bool,
}


@hydra.main(config_path="conf", config_name="certify", version_base="1.3")
def main(cfg: DictConfig) -> None:
    keep_freed_memory()  # reuse large freed buffers (see blockcert/allocator.py)
    from blockcert.certify import certify, log_report_to_wandb

    with one_line_errors():
        result = certify(cfg)
    print("\n".join(result.lines))
    log_report_to_wandb(cfg, result.report)


if __name__ == "__main__":
    preflight("certify", sys.argv[1:], TYPES)
    quiet_libraries()
    main()
