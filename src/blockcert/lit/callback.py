"""CertificateCallback: at the end of fit, certify the trained surrogate on held-out prompts.

The certificate itself is blockcert.cert.certificate's (`certify_block` writes, each
atomically, the surrogate IR, the held-out token ids and certificate.json); this callback then
logs it to W&B (artifact + summary) when a W&B logger is attached.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn

from blockcert.cert.certificate import (
    CERTIFICATE_FILE,
    TOKENS_FILE,
    CertificateOptions,
    certify_block,
)
from blockcert.cert.lipschitz import LipschitzOptions
from blockcert.surrogate.ir import GRAPH_FILE, WEIGHTS_FILE
from blockcert.tracking import coverage_key, log_files


class CertificateCallback(L.Callback):
    """certify_block (blockcert.cert.certificate) at the end of fit, then W&B."""

    def __init__(
        self,
        run_dir: str,
        options: CertificateOptions,
        lipschitz: LipschitzOptions,
        resolved_config: dict | None = None,
    ):
        self.run_dir, self.options, self.lipschitz = Path(run_dir), options, lipschitz
        self.config = resolved_config or {}
        self.certificate: dict | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._certify(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # trainer.validate() certifies an untrained (e.g. full-capacity) surrogate
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._certify(trainer, pl_module)

    def certify_as_is(self, trainer: L.Trainer, pl_module, datamodule) -> None:
        """Certify an untrained (e.g. full-capacity) surrogate without a validation loop: the
        certificate measures every held-out token itself, a loop would be a second pass."""
        for logger in trainer.loggers:
            logger.log_hyperparams(pl_module.hparams)
        self._certify(trainer, pl_module, datamodule)

    def _certify(self, trainer: L.Trainer, pl_module: L.LightningModule, datamodule=None) -> None:
        self.certificate = certify_block(
            pl_module.surrogate(),
            datamodule or trainer.datamodule,
            self.run_dir,
            self.options,
            self.lipschitz,
            self.config,
        )
        log_to_wandb(trainer, self.certificate, self.run_dir)


def log_to_wandb(trainer: L.Trainer, certificate: dict, run_dir: Path) -> None:
    """Certificate summary + artifact on every attached W&B logger's run."""
    from lightning.pytorch.loggers import WandbLogger

    metrics = certificate["metrics"]
    summary = {f"cert/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
    summary.update({f"cert/coverage_{coverage_key(c)}": c["fraction"] for c in metrics["coverage"]})
    for kind, lip in certificate["lipschitz"].items():
        if lip["value"] is not None:
            summary[f"cert/lipschitz_{kind}"] = lip["value"]
    summary["cert/params"] = certificate["surrogate"]["params"]
    files = [run_dir / name for name in (CERTIFICATE_FILE, GRAPH_FILE, WEIGHTS_FILE, TOKENS_FILE)]
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            log_files(
                f"certificate-block{certificate['block']}",
                "certificate",
                files,
                summary,
                run=logger.experiment,
                metadata={"certificate_sha256": certificate["certificate_sha256"]},
            )
