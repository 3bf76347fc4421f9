"""LightningModule distilling a surrogate IR graph on residual pairs of one block.

Loss (per-token squared errors e_t^2, normalised by the mean squared block update so that the
scale is comparable across blocks): mean(e^2) + max_aware_weight * mean(top-k e^2), the top-k
term pulling eps_max down and not only the mean. Transcoder graphs add auxk_alpha times sparsify's
AuxK loss on dead latents (blockcert.surrogate.transcoder.AuxK), on the same normalised scale.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn

from blockcert.lit.loss import per_token_error
from blockcert.lit.metrics import TokenErrorMetrics
from blockcert.surrogate.interpret import run_graph
from blockcert.surrogate.ir import Surrogate
from blockcert.surrogate.transcoder import AuxK

FROZEN = ("rope.inv_freq",)  # fixed by the architecture, not learned


def _slot(key: str) -> str:
    return key.replace(".", "__")


class SurrogateModule(L.LightningModule):
    def __init__(
        self,
        surrogate: Surrogate,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        max_aware_weight: float = 1.0,
        topk_fraction: float = 0.01,
        warmup_fraction: float = 0.05,
        taus: tuple[float, ...] = (),
        auxk_alpha: float = 0.0,
        auxk_dead_tokens: int = 100_000,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["surrogate"])
        self.graph = surrogate.graph
        self.keys = list(surrogate.weights)
        self.params = nn.ParameterDict(
            {
                _slot(k): nn.Parameter(v.float().clone())
                for k, v in surrogate.weights.items()
                if k not in FROZEN
            }
        )
        for key in FROZEN:
            if key in surrogate.weights:
                self.register_buffer(_slot(key), surrogate.weights[key].float().clone())
        self.register_buffer("update_scale", torch.tensor(0.0))
        self.val_metrics = TokenErrorMetrics(list(taus))
        use_auxk = auxk_alpha > 0 and AuxK.applies(surrogate.graph)
        self.auxk = AuxK(surrogate, auxk_dead_tokens) if use_auxk else None

    def weights(self) -> dict[str, torch.Tensor]:
        return {
            k: self.params[_slot(k)] if _slot(k) in self.params else getattr(self, _slot(k))
            for k in self.keys
        }

    def surrogate(self) -> Surrogate:
        return Surrogate(self.graph, {k: v.detach().clone() for k, v in self.weights().items()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_graph(self.graph, self.weights(), x)

    def training_data(self, datamodule: L.LightningDataModule) -> L.LightningDataModule:
        """The datamodule to fit on: the residual pairs as they are."""
        return datamodule

    def loss(self, x_in: torch.Tensor, x_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.auxk is None:
            pred = self(x_in)
        else:
            pred, values = run_graph(self.graph, self.weights(), x_in, keep=self.auxk.keep)
        errors = per_token_error(pred, x_out)
        squared = errors.pow(2)
        k = max(1, math.ceil(self.hparams.topk_fraction * squared.numel()))
        loss = squared.mean() + self.hparams.max_aware_weight * squared.topk(k).values.mean()
        if self.auxk is not None:
            loss = loss + self.hparams.auxk_alpha * self.auxk(values, self.weights(), x_out - pred)
        return loss / self.update_scale, errors

    def training_step(self, batch, batch_idx):
        x_in, x_out = batch
        if self.update_scale == 0:
            # mean squared norm of the block's update f(h) - h, fixed at the first batch
            self.update_scale.fill_((x_out - x_in).pow(2).sum(-1).mean().clamp_min(1e-12))
        loss, errors = self.loss(x_in, x_out)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/eps_max", errors.max(), prog_bar=True)
        if self.auxk is not None:
            self.log_dict({f"train/{k}": v for k, v in self.auxk.stats.items()})
        return loss

    def validation_step(self, batch, batch_idx):
        x_in, x_out = batch
        self.val_metrics.update(per_token_error(self(x_in), x_out))

    def on_validation_epoch_end(self):
        metrics = self.val_metrics.compute()
        self.log("val/eps_max", metrics.pop("eps_max"), prog_bar=True)
        self.log_dict({f"val/{k}": v for k, v in metrics.items()})
        self.val_metrics.reset()

    def configure_optimizers(self):
        return adamw_cosine(self.params.values(), self.hparams, self.trainer)


def adamw_cosine(params, hparams, trainer: L.Trainer) -> dict:
    """AdamW with linear warm-up then cosine decay to 0 over the run, stepped per batch."""
    optimizer = torch.optim.AdamW(params, lr=hparams.lr, weight_decay=hparams.weight_decay)
    total = max(1, int(trainer.estimated_stepping_batches))
    warmup = max(1, int(hparams.warmup_fraction * total))

    def cosine_with_warmup(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
