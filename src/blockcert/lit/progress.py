"""ProgressLines: one log line per training epoch, for logs and batch jobs (no progress bar).

A progress bar redraws one terminal line; written to a file it shows nothing until the end.
This callback says, after each epoch's validation: epoch, training tokens/s (training tokens
over the epoch's wall time, validation included), last training loss and held-out eps_max.
"""

from __future__ import annotations

import logging
import time

import lightning as L

log = logging.getLogger(__name__)


class ProgressLines(L.Callback):
    def __init__(self, block: int):
        self.block = block
        self.start = 0.0
        self.tokens = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start, self.tokens = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # residual pairs [b, s, d] count b s tokens; a transcoder's MLP token pairs [n, d] n
        self.tokens += batch[0].shape[:-1].numel()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        shown = "  ".join(
            f"{name} {float(metrics[key]):.5g}"
            for name, key in (
                ("loss", "train/loss"),
                ("val eps_max", "val/eps_max"),
                ("val FVU", "val/fvu"),
            )
            if key in metrics
        )
        log.info(
            "block %d epoch %d/%d: %.0f tokens/s  %s",
            self.block,
            trainer.current_epoch + 1,
            trainer.max_epochs,
            self.tokens / elapsed,
            shown,
        )


class StepLines(L.Callback):
    """A log line at most every `every_s` seconds during fit: step / total, the logged
    training figures, tokens/s and the estimated time left (batches of token ids `[b, s]`)."""

    def __init__(self, label: str, every_s: float = 30.0):
        self.label, self.every_s = label, every_s
        self.start = self.last = 0.0
        self.tokens = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = self.last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.tokens += batch.numel()
        now = time.perf_counter()
        if now - self.last < self.every_s:
            return
        self.last = now
        step, total = trainer.global_step, max(1, int(trainer.estimated_stepping_batches))
        metrics = trainer.callback_metrics
        shown = "  ".join(
            f"{key.split('/')[-1]} {float(value):.4g}"
            for key, value in metrics.items()
            if key.startswith("train/")
        )
        elapsed = now - self.start
        log.info(
            "%s step %d/%d: %s  %.0f tokens/s, ETA %.0f s",
            self.label,
            step,
            total,
            shown,
            self.tokens / elapsed,
            elapsed / max(step, 1) * (total - step),
        )
