"""Verify certificates, compose the global bound, check it against the stitched model.

python certify.py [model=smollm2] [runs=DIR] [out=DIR]; exit 3 when a hash or claim does not
verify, exit 4 when a sound bound is below the observed deviation. See README.md.
"""

import sys

import hydra
from omegaconf import DictConfig

from blockcert.allocator import keep_freed_memory
from blockcert.cli import check_choices, one_line_errors, quiet_libraries


@hydra.main(config_path="conf", config_name="certify", version_base="1.3")
def main(cfg: DictConfig) -> None:
    keep_freed_memory()  # reuse large freed buffers (see blockcert/allocator.py)
    from blockcert.certify import certify, log_report_to_wandb

    with one_line_errors():
        result = certify(cfg)
    print("\n".join(result.lines))
    log_report_to_wandb(cfg, result.report)


if __name__ == "__main__":
    check_choices(sys.argv[1:])
    quiet_libraries()
    main()
