"""Certify a whole set of surrogates (after a cascade or an end-to-end pass), one run dir each.

Every block gets what a single-block run writes: `runs_dir/block<k>/` with the IR, the held-out
token ids and certificate.json, measured by `certify_block` on the TEACHER pairs of the
held-out prompts (so a jointly fine-tuned block states its own error on teacher inputs, as any
other). `python certify.py model=... runs=runs_dir` then verifies and composes them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

from blockcert.capture.prompts import PromptSplit
from blockcert.cert.certificate import CertificateOptions, certify_block
from blockcert.cert.lipschitz import LipschitzOptions
from blockcert.lit.data import ResidualPairDataModule
from blockcert.models.adapters import BlockAdapter
from blockcert.surrogate.ir import Surrogate


def recertify(
    adapter: BlockAdapter,
    surrogates: Mapping[int, Surrogate],
    prompts: PromptSplit,
    runs_dir: str | Path,
    config: dict,
) -> dict[int, dict]:
    """{block: certificate} for every surrogate, written under `runs_dir/block<k>/`.

    config: the resolved train config (its `data`, `cache`, `seed`, `callbacks.certificate` and
    `lipschitz` are used; it is recorded in each certificate with `block` = k).
    """
    options = CertificateOptions.from_config(config["callbacks"]["certificate"])
    lipschitz = LipschitzOptions.from_config(config.get("lipschitz") or {})
    certificates = {}
    for k, surrogate in sorted(surrogates.items()):
        datamodule = ResidualPairDataModule(
            adapter,
            k,
            prompts,
            batch_size=config["data"]["batch_size"],
            cache=config["cache"]["enabled"],
            cache_root=config["cache"]["root"],
            seed=config["seed"],
        )
        run_dir = Path(runs_dir) / f"block{k}"
        block_config = {**copy.deepcopy(config), "block": k, "run_dir": str(run_dir)}
        certificates[k] = certify_block(
            surrogate, datamodule, run_dir, options, lipschitz, block_config
        )
    return certificates
