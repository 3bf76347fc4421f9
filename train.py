"""Certify one residual block: python train.py [model=smollm2] [block=12] [key=value ...].

Hydra multirun (-m) sweeps blocks or capacities; see README.md and conf/train.yaml.
"""

import sys

import hydra
from omegaconf import DictConfig

from blockcert.cli import check_choices, one_line_errors, quiet_libraries


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from blockcert.train import summary_lines, train

    with one_line_errors():
        certificate = train(cfg)
    print("\n".join(summary_lines(certificate)))
    print(f"certificate: {cfg.run_dir}/certificate.json")
    return float(certificate["metrics"]["eps_max"])


if __name__ == "__main__":
    check_choices(sys.argv[1:])
    quiet_libraries()
    main()
