"""Certify residual blocks: python train.py [model=smollm2] [block=12 | blocks=all] [key=value ...].

`blocks=` (all, [0,5,12], 'range(20,30)') certifies several blocks in one process from one
teacher pass; `stage=capture` only caches their pairs, for a later `-m block=...` sweep with a
parallel launcher. Hydra multirun (-m) sweeps blocks or capacities; see docs/quickstart.md and
conf/train.yaml. The entry point itself is blockcert.entry (also `blockcert-train`).
"""

from blockcert.entry import train_cli

if __name__ == "__main__":
    train_cli()
