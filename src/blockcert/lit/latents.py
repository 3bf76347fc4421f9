"""LatentReportCallback: after fit, write latents.json / latents.md of a transcoder surrogate.

Runs after the CertificateCallback (train.py orders it so) on the same held-out prompts; the
figures are defined in blockcert.surrogate.latents. A non-transcoder surrogate is left alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

from blockcert.surrogate.extract import extract_block
from blockcert.surrogate.latents import LATENTS_MD, latent_report, write_latent_report
from blockcert.surrogate.transcoder import AuxK

log = logging.getLogger(__name__)


class LatentReportCallback(L.Callback):
    def __init__(self, run_dir: str, n_latents: int = 16, n_contexts: int = 8):
        self.run_dir = Path(run_dir)
        self.n_latents, self.n_contexts = n_latents, n_contexts
        self.report: dict | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        surrogate = pl_module.surrogate()
        if not AuxK.applies(surrogate.graph):
            return
        datamodule = trainer.datamodule
        teacher = datamodule.adapter.teacher
        tokenizer = teacher.tokenizer
        self.report = latent_report(
            surrogate,
            extract_block(datamodule.adapter, datamodule.block),
            datamodule.heldout_pairs(),
            datamodule.prompts.heldout,
            lambda ids: tokenizer.decode(ids),
            self.n_latents,
            self.n_contexts,
        )
        self.report["block"] = datamodule.block
        self.report["model"] = teacher.name
        write_latent_report(self.run_dir, self.report, f"{teacher.name} block {datamodule.block}")
        log.info(
            "latents: mean L0 %.2f, dead %.2f%%, FVU %.4f -> %s",
            self.report["mean_l0"],
            100 * self.report["dead_fraction"],
            self.report["fvu"],
            self.run_dir / LATENTS_MD,
        )
