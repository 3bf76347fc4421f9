"""TranscoderModule: distil a transcoder's MLP on MLP token pairs; norms and attention frozen.

A transcoder keeps the teacher's norms and attention (blockcert.surrogate.transcoder), so only
the MLP is trained, on (w, m) token batches (blockcert.lit.mlp_pairs): w the MLP's normed input,
m the output it must add. The prediction runs the graph's own MLP nodes from w
(blockcert.surrogate.interpret.run_from), so the trained and the certified MLP are one
computation. Loss, normalised by the variance of m fixed at the first batch (so the MSE term is
the batch's FVU):
    sum_t ||e_t||^2 / (n var) + max_aware_weight * mean(top topk_fraction of ||e_t||^2) / var
    + auxk_alpha * AuxK (sparsify's dead-latent loss, blockcert.surrogate.transcoder.AuxK)
k schedule: with k_start > k the TopK keeps k_t = k_start (k / k_start)^(s / S) latents at step
s < S = k_anneal_fraction * total steps (geometric), then k: many latents get gradient early,
and the last steps (and the certificate) use the graph's own k. AdamW, linear warm-up then
cosine decay to 0 (blockcert.lit.module.adamw_cosine).
"""

from __future__ import annotations

import copy
import math

import lightning as L
import torch
from torch import nn

from blockcert.lit.loss import per_token_error
from blockcert.lit.metrics import TokenErrorMetrics
from blockcert.lit.mlp_pairs import MLP_INPUT, MlpPairDataModule
from blockcert.lit.module import adamw_cosine
from blockcert.surrogate.interpret import run_from, run_graph
from blockcert.surrogate.ir import Graph, Surrogate
from blockcert.surrogate.transcoder import AuxK, latent_values
from blockcert.surrogate.view import BlockView, block_view

MLP_NODES_AFTER = MLP_INPUT  # every node after the MLP's normed input is the MLP (trained)


def _slot(key: str) -> str:
    return key.replace(".", "__")


def mlp_weight_keys(graph: Graph) -> set[str]:
    """The weight keys read by the nodes after `mlp_norm` (encoder, decoder, skip)."""
    names = [n.output for n in graph.nodes]
    after = graph.nodes[names.index(MLP_NODES_AFTER) + 1 :]
    return {key for node in after for key in node.weights.values()}


class TranscoderModule(L.LightningModule):
    def __init__(
        self,
        surrogate: Surrogate,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        max_aware_weight: float = 0.0,
        topk_fraction: float = 0.01,
        warmup_fraction: float = 0.05,
        taus: tuple[float, ...] = (),
        auxk_alpha: float = 0.03125,
        auxk_dead_tokens: int = 100_000,
        k_start: int | None = None,
        k_anneal_fraction: float = 0.0,
        tokens_per_batch: int = 4096,
        buffer_tokens: int = 65536,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["surrogate"])
        view = block_view(surrogate)
        if view.mlp.kind != "transcoder":
            raise ValueError(f"TranscoderModule trains transcoders, not {surrogate.graph.family}")
        self.graph, self.k = surrogate.graph, view.mlp.k
        self.k_start = max(self.k, k_start or self.k)
        self.keys = list(surrogate.weights)
        trained = mlp_weight_keys(surrogate.graph)
        self.params = nn.ParameterDict(
            {_slot(k): nn.Parameter(surrogate.weights[k].float().clone()) for k in sorted(trained)}
        )
        for key in self.keys:
            if key not in trained:
                self.register_buffer(_slot(key), surrogate.weights[key].float().clone())
        self.register_buffer("variance", torch.tensor(0.0))
        self.register_buffer("tokens_seen", torch.tensor(0, dtype=torch.long))
        self.val_metrics = TokenErrorMetrics(list(taus))
        self.auxk = AuxK(surrogate, auxk_dead_tokens) if auxk_alpha > 0 else None
        self.latent_values = latent_values(view)  # what AuxK reads
        self._graphs: dict[int, Graph] = {self.k: self.graph}
        self._val_fvu = torch.zeros(3, dtype=torch.float64)  # residual, sum m^2, tokens
        self._val_sum: torch.Tensor | None = None

    def weights(self) -> dict[str, torch.Tensor]:
        return {
            k: self.params[_slot(k)] if _slot(k) in self.params else getattr(self, _slot(k))
            for k in self.keys
        }

    def surrogate(self) -> Surrogate:
        return Surrogate(self.graph, {k: v.detach().clone() for k, v in self.weights().items()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_graph(self.graph, self.weights(), x)

    def training_data(self, datamodule: L.LightningDataModule) -> MlpPairDataModule:
        """The datamodule to fit on: `datamodule`'s residual pairs as MLP token pairs."""
        return MlpPairDataModule(
            datamodule,
            self.surrogate(),
            self.hparams.tokens_per_batch,
            self.hparams.buffer_tokens,
            self.hparams.seed,
        )

    def k_schedule(self, step: int, total: int) -> int:
        """TopK's k at step `step` of `total` (the schedule in the module docstring)."""
        anneal = self.hparams.k_anneal_fraction * total
        if self.k_start == self.k or step >= anneal:
            return self.k
        return max(self.k, round(self.k_start * (self.k / self.k_start) ** (step / anneal)))

    def _graph_with_k(self, k: int) -> Graph:
        if k not in self._graphs:
            graph = copy.deepcopy(self.graph)
            graph.node(BlockView.HIDDEN).attrs["k"] = k
            self._graphs[k] = graph
        return self._graphs[k]

    def mlp(self, w: torch.Tensor, k: int | None = None) -> dict[str, torch.Tensor]:
        """The MLP's values from its normed input w `[n, d]`: pre-activations (encoder, or the
        gated latents), hidden, mlp_out."""
        graph = self._graph_with_k(k or self.k)
        names = (*self.latent_values, BlockView.MLP_OUT)
        return run_from(graph, self.weights(), {MLP_INPUT: w}, names)

    def loss(self, w: torch.Tensor, m: torch.Tensor, k: int | None = None) -> torch.Tensor:
        values = self.mlp(w, k)
        error = values[BlockView.MLP_OUT] - m
        squared = error.pow(2).sum(-1)
        loss = squared.mean()
        if self.hparams.max_aware_weight > 0:
            top = max(1, math.ceil(self.hparams.topk_fraction * len(squared)))
            loss = loss + self.hparams.max_aware_weight * squared.topk(top).values.mean()
        if self.auxk is not None:
            loss = loss + self.hparams.auxk_alpha * self.auxk(values, self.weights(), -error)
        return loss / self.variance

    def training_step(self, batch, batch_idx):
        w, m = batch
        if self.variance == 0:
            # mean squared deviation of the MLP output per token, fixed at the first batch
            self.variance.fill_((m - m.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12))
        k = self.k_schedule(self.global_step, int(self.trainer.estimated_stepping_batches))
        loss = self.loss(w, m, k)
        self.tokens_seen += len(w)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/k", float(k))
        self.log("train/tokens_seen", float(self.tokens_seen))
        if self.auxk is not None:
            self.log_dict({f"train/{key}": v for key, v in self.auxk.stats.items()})
        return loss

    def validation_step(self, batch, batch_idx):
        x_in, x_out = batch
        out, values = run_graph(
            self.graph, self.weights(), x_in, keep=(BlockView.MID, BlockView.MLP_OUT)
        )
        self.val_metrics.update(per_token_error(out, x_out))
        d = x_in.shape[-1]
        target = (x_out - values[BlockView.MID]).reshape(-1, d).double()
        residual = values[BlockView.MLP_OUT].reshape(-1, d).double() - target
        sums = torch.tensor([residual.pow(2).sum(), target.pow(2).sum(), len(target)])
        self._val_fvu += sums.to(self._val_fvu.dtype).cpu()
        part = target.sum(0).cpu()
        self._val_sum = part if self._val_sum is None else self._val_sum + part

    def on_validation_epoch_end(self):
        metrics = self.val_metrics.compute()
        self.log("val/eps_max", metrics.pop("eps_max"), prog_bar=True)
        self.log_dict({f"val/{k}": v for k, v in metrics.items()})
        self.val_metrics.reset()
        residual, square, n = self._val_fvu.tolist()
        if n > 0:
            variance = square - float(self._val_sum.pow(2).sum()) / n
            self.log("val/fvu", residual / max(variance, 1e-300), prog_bar=True)
        self._val_fvu.zero_()
        self._val_sum = None

    def configure_optimizers(self):
        return adamw_cosine(self.params.values(), self.hparams, self.trainer)
