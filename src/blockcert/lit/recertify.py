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
from blockcert.lit.callback import certify_block
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

    config: the resolved train config (its `data`, `cache`, `seed` and
    `callbacks.certificate` are used; it is recorded in each certificate with `block` = k).
    """
    cert_cfg = config["callbacks"]["certificate"]
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
            surrogate=surrogate,
            datamodule=datamodule,
            run_dir=run_dir,
            taus_abs=list(cert_cfg["taus_abs"]),
            taus_rel=list(cert_cfg["taus_rel"]),
            delta=cert_cfg["delta"],
            radius=cert_cfg.get("radius"),
            lipschitz_prompts=cert_cfg.get("lipschitz_prompts", 4),
            config=block_config,
            lipschitz_search=cert_cfg.get("lipschitz_search"),
            sound_prompts=cert_cfg.get("sound_prompts"),
            refine_tokens=cert_cfg.get("refine_tokens"),
        )
    return certificates
