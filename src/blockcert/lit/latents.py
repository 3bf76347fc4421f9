"""LatentReportCallback: after fit, write latents.json / .md / .html of a transcoder surrogate.

Runs after the CertificateCallback (train.py orders it so) on the same held-out prompts; the
figures are defined in blockcert.surrogate.latents, the page in blockcert.evaluate.latents_html.
A non-transcoder surrogate is left alone. The direct logit effect of a decoder direction u is
(head(u) - head(-u)) / 2 with head = final norm + unembedding: for an RMSNorm head that is
head(u) itself, and for a LayerNorm head the offsets (beta, a head bias) cancel, leaving
W_U (gamma * normalised u).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch

from blockcert.evaluate.latents_html import LATENTS_HTML, write_latents_html
from blockcert.models.adapters import BlockAdapter
from blockcert.surrogate.extract import extract_block
from blockcert.surrogate.latents import latent_report, write_latent_report
from blockcert.surrogate.transcoder import AuxK

log = logging.getLogger(__name__)


def direct_logit_effect(adapter: BlockAdapter):
    """directions [n, d] -> [n, vocab]: their direct logit effects (see the module doc)."""

    @torch.no_grad()
    def effect(directions: torch.Tensor) -> torch.Tensor:
        dtype = next(adapter.teacher.model.parameters()).dtype
        u = directions.to(dtype)[None]
        return ((adapter.head(u) - adapter.head(-u)) / 2)[0].float()

    return effect


class LatentReportCallback(L.Callback):
    def __init__(
        self, run_dir: str, n_latents: int = 64, n_contexts: int = 8, n_frequent: int = 16
    ):
        self.run_dir = Path(run_dir)
        self.n_latents, self.n_contexts, self.n_frequent = n_latents, n_contexts, n_frequent
        self.report: dict | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        surrogate = pl_module.surrogate()
        if not AuxK.applies(surrogate.graph):
            return
        datamodule = trainer.datamodule
        adapter = datamodule.adapter
        tokenizer = adapter.teacher.tokenizer
        self.report = latent_report(
            surrogate,
            extract_block(adapter, datamodule.block),
            datamodule.heldout_pairs(),
            datamodule.prompts.heldout,
            lambda ids: tokenizer.decode(ids),
            self.n_latents,
            self.n_contexts,
            logit_effect=direct_logit_effect(adapter),
            n_frequent=self.n_frequent,
        )
        seen = getattr(pl_module, "tokens_seen", None)
        self.report["tokens_seen"] = int(seen) if seen is not None else None
        self.report["block"] = datamodule.block
        self.report["model"] = adapter.teacher.name
        title = f"{adapter.teacher.name} block {datamodule.block}"
        write_latent_report(self.run_dir, self.report, title)
        write_latents_html(self.run_dir, self.report, title)
        log.info(
            "latents: mean L0 %.2f, dead %.2f%%, FVU %.4f -> %s",
            self.report["mean_l0"],
            100 * self.report["dead_fraction"],
            self.report["fvu"],
            self.run_dir / LATENTS_HTML,
        )
