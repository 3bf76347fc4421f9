"""End-to-end pass: fine-tune every surrogate jointly against the teacher's next-token logits.

Per batch of prompts (streamed, the teacher run on the fly): teacher h_0..h_L and
p = softmax(head(h_L)); stitched h~_{k+1} = g_k(h~_k) (the teacher block where no g_k) and
q = softmax(head(h~_L)). Loss

    KL(p || q)  +  block_weight * mean_k mean_t ||g_k(h_k)_t - h_{k+1,t}||^2 / u_k,

KL averaged over positions (nats), u_k the mean squared update ||h_{k+1} - h_k||^2 of block k
(fixed at the first batch, as in SurrogateModule). The KL term trains the blocks to cancel each
other's drift; the per-block term, on TEACHER inputs, keeps each block's own error, the
quantity its certificate states, from growing while they do. Teacher weights stay frozen;
gradients flow through its head and unreplaced blocks into the surrogates. Re-certify every
block afterwards (`blockcert.lit.recertify`).
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from blockcert.lit.cascade import MemoryBatches, quiet_trainer
from blockcert.lit.loss import per_token_error
from blockcert.lit.module import SurrogateModule, adamw_cosine
from blockcert.lit.progress import StepLines
from blockcert.models.adapters import BlockAdapter
from blockcert.surrogate.interpret import run_graph
from blockcert.surrogate.ir import Surrogate

Tensor = torch.Tensor


def next_token_kl(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """Mean over positions of KL(softmax(teacher) || softmax(student)), fp32; logits [b, s, V]."""
    p_log = F.log_softmax(teacher_logits.float(), dim=-1)
    q_log = F.log_softmax(student_logits.float(), dim=-1)
    return (p_log.exp() * (p_log - q_log)).sum(-1).mean()


class JointModule(L.LightningModule):
    """All surrogates of one model as one LightningModule; batches are token ids [b, s]."""

    def __init__(
        self,
        adapter: BlockAdapter,
        surrogates: Mapping[int, Surrogate],
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        block_weight: float = 1.0,
        warmup_fraction: float = 0.05,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["adapter", "surrogates"])
        self.adapter = adapter  # the frozen teacher: not a submodule, never optimised
        self.blocks = nn.ModuleDict({str(k): SurrogateModule(s) for k, s in surrogates.items()})
        self.register_buffer("update_scale", torch.zeros(adapter.num_blocks))

    def surrogates(self) -> dict[int, Surrogate]:
        return {int(k): module.surrogate() for k, module in self.blocks.items()}

    def _block(self, k: int, h: Tensor) -> Tensor:
        module = self.blocks[str(k)] if str(k) in self.blocks else None
        if module is None:
            return self.adapter.block(k, h).float()
        return run_graph(module.graph, module.weights(), h)

    @torch.no_grad()
    def teacher(self, ids: Tensor) -> tuple[list[Tensor], Tensor]:
        """([h_0, ..., h_L], logits) of the teacher on ids."""
        states = [self.adapter.embed(ids).float()]
        for k in range(self.adapter.num_blocks):
            states.append(self.adapter.block(k, states[-1]).float())
        return states, self.adapter.head(states[-1])

    def stitched_logits(self, h0: Tensor) -> Tensor:
        h = h0
        for k in range(self.adapter.num_blocks):
            h = self._block(k, h)
        return self.adapter.head(h)

    def losses(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """(KL term, per-block term) on a batch of token ids."""
        states, teacher_logits = self.teacher(ids)
        if not bool(self.update_scale.any()):
            updates = [
                (states[k + 1] - states[k]).pow(2).sum(-1).mean() for k in range(len(states) - 1)
            ]
            self.update_scale.copy_(torch.stack(updates).clamp_min(1e-12))
        kl = next_token_kl(teacher_logits, self.stitched_logits(states[0]))
        terms = []
        for key, module in self.blocks.items():
            k = int(key)
            pred = run_graph(module.graph, module.weights(), states[k])
            terms.append(per_token_error(pred, states[k + 1]).pow(2).mean() / self.update_scale[k])
        block = torch.stack(terms).mean() if terms else kl.new_zeros(())
        return kl, block

    def training_step(self, ids, batch_idx):
        kl, block = self.losses(ids)
        loss = kl + self.hparams.block_weight * block
        self.log_dict({"train/kl": kl, "train/block": block, "train/loss": loss}, prog_bar=True)
        return loss

    def validation_step(self, ids, batch_idx):
        states, teacher_logits = self.teacher(ids)
        kl = next_token_kl(teacher_logits, self.stitched_logits(states[0]))
        self.log("val/kl", kl, batch_size=len(ids))

    def configure_optimizers(self):
        return adamw_cosine(self.blocks.parameters(), self.hparams, self.trainer)


class PromptsDataModule(L.LightningDataModule):
    """Batches of token ids: training prompts shuffled every epoch, held-out prompts in order."""

    def __init__(self, train: Tensor, heldout: Tensor | None, batch_size: int, seed: int = 0):
        super().__init__()
        self.train, self.heldout, self.batch_size, self.seed = train, heldout, batch_size, seed

    def _batches(self, ids: Tensor) -> list[Tensor]:
        return [ids[i : i + self.batch_size] for i in range(0, len(ids), self.batch_size)]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            MemoryBatches(self._batches(self.train), shuffle=True, seed=self.seed), batch_size=None
        )

    def val_dataloader(self) -> DataLoader:
        heldout = [] if self.heldout is None else self._batches(self.heldout)
        return DataLoader(MemoryBatches(heldout, shuffle=False), batch_size=None)


def joint_finetune(
    adapter: BlockAdapter,
    surrogates: Mapping[int, Surrogate],
    train_ids: Tensor,
    batch_size: int = 4,
    max_epochs: int = 1,
    lr: float = 1e-4,
    block_weight: float = 1.0,
    seed: int = 0,
    gradient_clip_val: float = 1.0,
    max_steps: int = -1,
    progress: bool = False,
) -> dict[int, Surrogate]:
    """Every surrogate fine-tuned jointly (see the module docstring); returns new surrogates.
    progress: a log line every 30 s (step, KL, per-block term, tokens/s, time left)."""
    L.seed_everything(seed, verbose=False)
    module = JointModule(adapter, surrogates, lr=lr, block_weight=block_weight)
    callbacks = [StepLines("end-to-end")] if progress else None
    trainer = quiet_trainer(max_epochs, gradient_clip_val, max_steps, callbacks)
    trainer.fit(module, datamodule=PromptsDataModule(train_ids, None, batch_size, seed))
    return module.surrogates()
