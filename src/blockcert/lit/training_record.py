"""TrainingRecordCallback: training.json in the run directory, what a fit cost.

tokens_seen counts the tokens of every training batch (a residual pair batch `[b, s, d]`
counts b s tokens, an MLP token batch `[n, d]` n), so epochs x training tokens for a full run;
fit_seconds is the wall time of trainer.fit without the certificate; load_average is the host's
1-minute load at the start and the end of the fit (timings on a shared machine need it).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning as L

from blockcert.atomic import write_text_atomic

TRAINING_JSON = "training.json"


class TrainingRecordCallback(L.Callback):
    def __init__(self, run_dir: str):
        self.run_dir = Path(run_dir)
        self.tokens_seen = 0
        self.start = 0.0
        self.load_start = 0.0
        self.record: dict | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start, self.load_start = time.perf_counter(), os.getloadavg()[0]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.tokens_seen += batch[0].shape[:-1].numel()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # on_train_end: before on_fit_end, where the certificate is computed
        self.record = {
            "tokens_seen": self.tokens_seen,
            "steps": trainer.global_step,
            "epochs": trainer.current_epoch,
            "fit_seconds": time.perf_counter() - self.start,
            "load_average": [self.load_start, os.getloadavg()[0]],
            "cpu_count": os.cpu_count(),
            "module": type(pl_module).__name__,
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.run_dir / TRAINING_JSON, json.dumps(self.record, indent=1))
