"""The calibration walk: every block cut and compensated on streamed calibration statistics.

Two residual streams advance block by block over the calibration prompts, held in memory one
block at a time (`[n, s, d]` fp32 each): the teacher's h_k (h_{k+1} = f_k(h_k)) and the
stitched h~_k (h~_{k+1} = g_k(h~_k), the surrogates already cut). Block k is fitted on

    inputs   teacher:   h_k                  (each block on its own, as FLAP, Wanda, ZipLM)
             stitched:  h~_k                 (sequential: block k also undoes the drift of
                                              g_0..g_{k-1}, as SparseGPT / GPTQ feed the
                                              already-compressed layers' outputs forward)
             mixed:     both, weighted (1 - stitched_weight, stitched_weight)
    targets  the teacher's h_{k+1} (and its mid state for the attention), always.

`BlockCalibration` turns the stored batches into the normal equations that `compress.cut`
reads, one sweep over the batches per call. The walk saves each fitted g_k (IR files) under
`store` as soon as it exists, so a killed walk resumes at the first block without one; the
streams are rebuilt through the saved surrogates (one forward pass).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from blockcert.compress.cut import MlpStats
from blockcert.compress.lstsq import NormalEquations
from blockcert.errors import BlockCertError
from blockcert.models.adapters import BlockAdapter
from blockcert.surrogate.extract import extract_block
from blockcert.surrogate.interpret import run_graph, run_values
from blockcert.surrogate.ir import GRAPH_FILE, Surrogate, load_surrogate, save_surrogate
from blockcert.surrogate.view import BlockView

log = logging.getLogger(__name__)
Tensor = torch.Tensor
INPUTS = ("teacher", "stitched", "mixed")
LOGGED_BATCHES = 8  # teacher inputs: the deviation logged per block is measured on these


@dataclass
class BlockCalibration:
    """Block k's calibration batches: teacher inputs x, teacher outputs y, stitched inputs xs
    (None when only teacher inputs are used); weights (teacher, stitched) of the two sources."""

    block: int
    full: Surrogate
    x: list[Tensor]
    y: list[Tensor]
    xs: list[Tensor] | None
    weights: tuple[float, float]

    def _sources(self, i: int) -> list[tuple[Tensor, float]]:
        pairs = [(self.x[i], self.weights[0])]
        if self.xs is not None:
            pairs.append((self.xs[i], self.weights[1]))
        return [(x, w) for x, w in pairs if w > 0]

    @torch.no_grad()
    def attention(self) -> NormalEquations:
        """Heads' outputs a(x) -> teacher mid state minus x: what P_o must produce."""
        d = self.full.graph.d_model
        n = self.full.weights[self.full.graph.node("attn_out").weights["weight"]].shape[1]
        equations = NormalEquations(n, d)
        for i in range(len(self.x)):
            mid = run_values(self.full.graph, self.full.weights, self.x[i], ("resid_attn",))
            for x, w in self._sources(i):
                a = run_values(self.full.graph, self.full.weights, x, ("attn",))["attn"]
                equations.add(a, mid["resid_attn"] - x, w)
        return equations

    @torch.no_grad()
    def mlp(self, surrogate: Surrogate) -> MlpStats:
        """Hidden units of `surrogate` -> teacher output minus its mid state; sum of w^2."""
        d = surrogate.graph.d_model
        width = surrogate.weights[surrogate.graph.node("mlp_out").weights["weight"]].shape[1]
        equations, input_sq = NormalEquations(width, d), torch.zeros(d, dtype=torch.float64)
        names = (BlockView.MID, BlockView.HIDDEN, "mlp_norm")
        for i in range(len(self.x)):
            for x, w in self._sources(i):
                values = run_values(surrogate.graph, surrogate.weights, x, names)
                equations.add(values[BlockView.HIDDEN], self.y[i] - values[BlockView.MID], w)
                normed = values["mlp_norm"].reshape(-1, d).double()
                input_sq += w * normed.pow(2).sum(0)
        return MlpStats(equations, input_sq)


Fit = Callable[[BlockCalibration], Surrogate]


class WalkStore:
    """Fitted surrogates of a walk, one IR directory per block (`block<k>/`)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, k: int) -> Path:
        return self.root / f"block{k}"

    def has(self, k: int) -> bool:
        return (self.path(k) / GRAPH_FILE).is_file()

    def load(self, k: int) -> Surrogate:
        return load_surrogate(self.path(k))

    def save(self, k: int, surrogate: Surrogate) -> None:
        # graph last (save_surrogate writes weights first): `has` sees a complete pair
        save_surrogate(surrogate, self.path(k))


def _batches(adapter: BlockAdapter, ids: Tensor, batch_size: int) -> list[Tensor]:
    with torch.no_grad():
        return [
            adapter.embed(ids[i : i + batch_size]).float() for i in range(0, len(ids), batch_size)
        ]


def _deviation(pred: Sequence[Tensor], target: Sequence[Tensor]) -> tuple[float, float]:
    """(mean, max) over tokens of ||pred - target|| / ||target|| on the calibration prompts."""
    rel = torch.cat(
        [
            ((p - t).norm(dim=-1) / t.norm(dim=-1)).flatten()
            for p, t in zip(pred, target, strict=True)
        ]
    )
    return float(rel.mean()), float(rel.max())


@torch.no_grad()
def walk(
    adapter: BlockAdapter,
    ids: Tensor,
    blocks: Sequence[int],
    fit: Fit,
    inputs: str = "stitched",
    stitched_weight: float = 1.0,
    batch_size: int = 16,
    store: WalkStore | None = None,
) -> dict[int, Surrogate]:
    """{k: g_k} for `blocks`, fitted in increasing order by `fit(BlockCalibration)`."""
    if inputs not in INPUTS:
        raise BlockCertError(f"calibration inputs={inputs!r} is not one of {', '.join(INPUTS)}.")
    weights = {"teacher": (1.0, 0.0), "stitched": (0.0, 1.0)}.get(
        inputs, (1.0 - stitched_weight, stitched_weight)
    )
    chosen = sorted(set(blocks))
    teacher = _batches(adapter, ids, batch_size)
    student = _batches(adapter, ids, batch_size) if weights[1] > 0 else None
    surrogates: dict[int, Surrogate] = {}
    start = time.perf_counter()
    for k in range(max(chosen) + 1):
        block_start = time.perf_counter()
        outputs = [adapter.block(k, x).float() for x in teacher]
        if k not in chosen:
            if student is not None:
                student = [adapter.block(k, x).float() for x in student]
            teacher = outputs
            continue
        resumed = store is not None and store.has(k)
        if resumed:
            surrogates[k] = store.load(k)
        else:
            full = extract_block(adapter, k)
            calibration = BlockCalibration(k, full, teacher, outputs, student, weights)
            surrogates[k] = fit(calibration)
            if store is not None:
                store.save(k, surrogates[k])
        g = surrogates[k]
        # the stitched stream advances through g_k; on teacher inputs a few batches suffice for
        # the logged deviation (the next block reads the teacher's outputs)
        stream = student if student is not None else teacher[:LOGGED_BATCHES]
        advanced = [run_graph(g.graph, g.weights, x) for x in stream]
        mean, worst = _deviation(advanced, outputs[: len(advanced)])
        done = chosen.index(k) + 1
        elapsed = time.perf_counter() - start
        log.info(
            "walk block %d (%d/%d%s): %d of %d params, %s deviation rel mean %.3f%% max %.1f%% "
            "(%.1f s, ETA %.0f s)",
            k,
            done,
            len(chosen),
            ", resumed" if resumed else "",
            g.num_params,
            g.graph.capacity["teacher_params"],
            "stitched" if student is not None else "teacher-input",
            100 * mean,
            100 * worst,
            time.perf_counter() - block_start,
            elapsed / done * (len(chosen) - done),
        )
        if student is not None:
            student = advanced
        teacher = outputs
    return surrogates
