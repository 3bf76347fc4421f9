"""Every block replaced at a fraction of its MLP neurons (heads kept): methods side by side.

    python bench/bench_surrogates.py [--model smollm2] [--fraction 0.75] [--train-prompts 96]
        [--heldout-prompts 8] [--epochs 2] [--joint-epochs 1] [--methods all] [--blocks all]
        [--threads 1] [--out runs/bench_surrogates.json]

Methods, each a full set of surrogates (blocks not in --blocks stay the teacher's):
  prune        importance cut (mean squared contribution through the down projection), no refit
  refit        the cut + least-squares refit of the output projections (Capacity.build)
  distill      refit, then per-block distillation on teacher pairs (h_k, h_{k+1}) (train.py today)
  cascade      refit, then distillation on stitched inputs (h~_k, h_{k+1}) (lit/cascade.py)
  cascade+e2e  cascade, then the end-to-end pass KL + per-block loss (lit/joint.py)
  alloc+...    the same budget spread by sensitivity (surrogate/allocate.py): refit, cascade, e2e
Per method, on the held-out prompts: params kept (of the replaced teacher blocks), stitched ppl
delta vs the teacher, KL(teacher || stitched) per next token, top-1 agreement, max eps (max over
blocks of the certificate's eps_max: ||g_k(h_k) - h_{k+1}|| on teacher inputs) and wall time
of the method's own stage: prune, refit, distill and cascade share one walk over the blocks
(one teacher pass over the training prompts) and report its total; e2e rows their own pass.
Results go to --out as JSON. Certificates are written by train.py / lit.recertify, not here.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from blockcert.atomic import write_text_atomic
from blockcert.capture.corpus import ShakespeareCorpus
from blockcert.capture.prompts import build_prompts
from blockcert.evaluate.trajectory import stitched_evaluation, teacher_trajectory
from blockcert.lit.cascade import cascade_surrogates, distil
from blockcert.lit.joint import joint_finetune
from blockcert.models.adapters import adapter_for
from blockcert.stitched import load_teacher
from blockcert.surrogate.allocate import allocate_by_sensitivity
from blockcert.surrogate.capacity import Capacity, capacity_record, importance, keep_neurons
from blockcert.surrogate.extract import extract_block
from blockcert.surrogate.interpret import run_graph
from blockcert.surrogate.ir import Surrogate
from blockcert.surrogate.view import block_view

METHODS = ("prune", "refit", "distill", "cascade", "cascade+e2e", "alloc+cascade+e2e")


def pruned_only(full: Surrogate, scores: torch.Tensor, width: int) -> Surrogate:
    """The importance cut at `width` neurons without any refit (the naive baseline)."""
    surrogate = Surrogate(copy.deepcopy(full.graph), dict(full.weights))
    keep_neurons(surrogate, sorted(scores.topk(width).indices.tolist()))
    cap = full.graph.capacity
    surrogate.graph.capacity = capacity_record(
        cap["heads"], cap["kv_heads"], width, None, cap["heads"], cap["mlp_width"], full.num_params
    )
    block_view(surrogate)
    return surrogate


@torch.no_grad()
def max_eps(surrogates: dict[int, Surrogate], states: list[torch.Tensor], batch: int) -> float:
    """max over blocks and held-out tokens of ||g_k(h_k) - h_{k+1}||_2 (teacher inputs)."""
    worst = 0.0
    for k, s in surrogates.items():
        for i in range(0, len(states[k]), batch):
            pred = run_graph(s.graph, s.weights, states[k][i : i + batch])
            worst = max(worst, float((pred - states[k + 1][i : i + batch]).norm(dim=-1).max()))
    return worst


class Bench:
    def __init__(self, args):
        self.args = args
        self.teacher = load_teacher(args.model)
        self.adapter = adapter_for(self.teacher)
        n = self.adapter.num_blocks
        self.blocks = (
            list(range(n)) if args.blocks == "all" else [int(b) for b in args.blocks.split(",")]
        )
        self.prompts = build_prompts(
            ShakespeareCorpus(),
            self.teacher.tokenizer,
            seq_len=args.seq_len,
            n_train=args.train_prompts,
            n_heldout=args.heldout_prompts,
            seed=args.seed,
        )
        start = time.perf_counter()
        self.heldout_states = teacher_trajectory(self.adapter, self.prompts.heldout, args.batch)
        self.log(f"held-out teacher trajectory {time.perf_counter() - start:.1f} s")
        self.full = {k: extract_block(self.adapter, k) for k in self.blocks}
        self.teacher_params = sum(self.full[k].num_params for k in self.blocks)
        self.imp: dict[int, torch.Tensor] = {}
        self.refit: dict[int, Surrogate] = {}
        self.rows: list[dict] = []
        self.ppl_teacher: float | None = None

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def width(self, k: int) -> int:
        return max(1, round(self.args.fraction * self.full[k].graph.capacity["mlp_width"]))

    def importance_inputs(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return inputs[: self.args.importance_batches]

    def build_refit(self, k: int, inputs: list[torch.Tensor], width: int | None = None):
        """Importance cut + LS refit on teacher inputs; records importance for allocation."""
        inputs = self.importance_inputs(inputs)
        if k not in self.imp:
            self.imp[k] = importance(self.full[k], inputs)[1]
        mlp_width = self.full[k].graph.capacity["mlp_width"]
        fraction = (width or self.width(k)) / mlp_width
        return Capacity(mlp_fraction=fraction).build(self.full[k], inputs)

    def fit(self, k: int, surrogate: Surrogate, pairs) -> Surrogate:
        start = time.perf_counter()
        out = distil(surrogate, pairs, self.args.epochs, {"lr": self.args.lr}, seed=self.args.seed)
        self.log(f"  block {k}: distilled in {time.perf_counter() - start:.1f} s")
        return out

    def evaluate(self, method: str, surrogates: dict[int, Surrogate], seconds: float, **extra):
        result = stitched_evaluation(
            self.adapter, surrogates, self.prompts.heldout, self.heldout_states, self.args.batch
        )
        self.ppl_teacher = result.ppl_baseline
        params = sum(s.num_params for s in surrogates.values())
        row = {
            "method": method,
            "params_kept": params / self.teacher_params,
            "mlp_widths": [surrogates[k].graph.capacity["mlp_width"] for k in sorted(surrogates)],
            "ppl_teacher": result.ppl_baseline,
            "ppl_stitched": result.ppl_stitched,
            "ppl_delta": result.ppl_delta,
            "kl": result.kl_mean,
            "top1": result.top1_agreement,
            "max_eps": max_eps(surrogates, self.heldout_states, self.args.batch),
            "final_deviation_max": result.block_deviation[-1],
            "seconds": seconds,
            **extra,
        }
        self.rows.append(row)
        self.log(
            f"{method}: ppl {row['ppl_stitched']:.3f} ({row['ppl_delta']:+.3f}), KL "
            f"{row['kl']:.4f}, top-1 {row['top1']:.3%}, max eps {row['max_eps']:.2f}, "
            f"params {row['params_kept']:.1%}, {seconds:.0f} s"
        )
        self.save()

    def save(self) -> None:
        out = Path(self.args.out)
        payload = {"args": vars(self.args), "rows": self.rows, "n_heldout_tokens": None}
        write_text_atomic(out, json.dumps(payload, indent=1))

    def walk(self, widths: dict[int, int] | None = None):
        """One walk over the blocks (one teacher pass): the cut + refit of block k on teacher
        inputs, then the cascade fit on stitched inputs; on the flat cut (widths None) also the
        naive cut and per-block distillation on teacher inputs of the same refit start.
        Returns {method: surrogates}."""
        out = {"cascade": {}, "prune": {}, "refit": {}, "distill": {}}
        teacher_inputs: dict[int, list[torch.Tensor]] = {}

        def build(k, inputs):
            start = time.perf_counter()
            surrogate = self.build_refit(k, inputs, None if widths is None else widths[k])
            out["refit"][k] = surrogate
            if widths is None:
                out["prune"][k] = pruned_only(self.full[k], self.imp[k], self.width(k))
                teacher_inputs[k] = inputs
            self.log(f"  block {k}: cut + refit in {time.perf_counter() - start:.1f} s")
            return surrogate

        def fit(k, surrogate, pairs):
            if widths is None:  # today's method: the same start, teacher inputs
                targets = [target for _, target in pairs]
                teacher_pairs = list(zip(teacher_inputs.pop(k), targets, strict=True))
                out["distill"][k] = self.fit(k, surrogate, teacher_pairs)
            return self.fit(k, surrogate, pairs)

        out["cascade"] = cascade_surrogates(
            self.adapter, self.prompts.train, self.args.batch, build, fit, blocks=self.blocks
        )
        return out

    def joint(self, surrogates):
        return joint_finetune(
            self.adapter,
            surrogates,
            self.prompts.train[: self.args.joint_prompts],
            batch_size=self.args.joint_batch,
            max_epochs=self.args.joint_epochs,
            lr=self.args.joint_lr,
            block_weight=self.args.block_weight,
            seed=self.args.seed,
        )

    def allocation(self) -> tuple[dict[int, int], list[float]]:
        """Widths by sensitivity, calibrated on the first --calib-prompts training prompts."""
        if self.blocks != list(range(self.adapter.num_blocks)):
            raise SystemExit("alloc+cascade+e2e spreads the budget over all blocks: --blocks all")
        calib = self.prompts.train[: self.args.calib_prompts]
        states = teacher_trajectory(self.adapter, calib, self.args.batch)
        if not self.refit:
            for k in self.blocks:
                self.refit[k] = self.build_refit(k, [states[k]])
        widths, block_kl = allocate_by_sensitivity(
            self.adapter,
            states,
            lambda k: self.refit[k],
            [self.imp[k] for k in self.blocks],
            self.args.fraction,
            floor_fraction=self.args.floor_fraction,
            batch_size=self.args.batch,
        )
        return dict(zip(self.blocks, widths, strict=True)), block_kl

    def run(self) -> None:
        """Walk 1 (flat cut): prune, refit, distill, cascade, then cascade+e2e; walk 2: the
        budget spread by sensitivity, cascade, e2e. Rows are saved as they come."""
        methods = METHODS if self.args.methods == "all" else self.args.methods.split(",")
        if any(m in methods for m in ("prune", "refit", "distill", "cascade", "cascade+e2e")):
            start = time.perf_counter()
            flat = self.walk()
            seconds = time.perf_counter() - start
            self.refit = flat["refit"]
            for method in ("prune", "refit", "distill", "cascade"):
                if method in methods or (method == "cascade" and "cascade+e2e" in methods):
                    self.evaluate(method, flat[method], seconds, walk="flat (shared)")
            if "cascade+e2e" in methods:
                start = time.perf_counter()
                joint = self.joint(flat["cascade"])
                self.evaluate(
                    "cascade+e2e", joint, time.perf_counter() - start, builds_on="cascade"
                )
        if "alloc+cascade+e2e" in methods:
            start = time.perf_counter()
            widths, block_kl = self.allocation()
            self.log(f"allocation {time.perf_counter() - start:.0f} s: widths {widths}")
            walked = self.walk(widths)
            cascaded, seconds = walked["cascade"], time.perf_counter() - start
            self.evaluate("alloc+refit", walked["refit"], seconds, block_kl=block_kl)
            self.evaluate("alloc+cascade", cascaded, seconds, walk="alloc (shared)")
            start = time.perf_counter()
            joint = self.joint(cascaded)
            self.evaluate(
                "alloc+cascade+e2e", joint, time.perf_counter() - start, builds_on="alloc+cascade"
            )
        self.table()

    def table(self) -> None:
        print(
            "| method | params kept | ppl delta | KL (nats) | top-1 | max eps | wall s |\n"
            "|---|---|---|---|---|---|---|"
        )
        for r in self.rows:
            print(
                f"| {r['method']} | {r['params_kept']:.1%} | {r['ppl_delta']:+.3f} | "
                f"{r['kl']:.4f} | {r['top1']:.2%} | {r['max_eps']:.2f} | {r['seconds']:.0f} |"
            )
        print(f"teacher ppl {self.ppl_teacher:.3f} on {self.args.heldout_prompts} held-out prompts")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--fraction", type=float, default=0.75)
    parser.add_argument("--train-prompts", type=int, default=96)
    parser.add_argument("--heldout-prompts", type=int, default=8)
    parser.add_argument("--calib-prompts", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--importance-batches", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--joint-epochs", type=int, default=1)
    parser.add_argument("--joint-batch", type=int, default=4)
    parser.add_argument("--joint-prompts", type=int, default=32, help="first N training prompts")
    parser.add_argument("--joint-lr", type=float, default=2e-5)
    parser.add_argument("--block-weight", type=float, default=1.0)
    parser.add_argument("--floor-fraction", type=float, default=0.25)
    parser.add_argument("--methods", default="all", help=f"all or a comma list of {METHODS}")
    parser.add_argument("--blocks", default="all", help="all or a comma list of block indices")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", default="runs/bench_surrogates.json")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    if args.threads:  # on a shared, oversubscribed CPU one thread each wastes less in barriers
        torch.set_num_threads(args.threads)
    Bench(args).run()


if __name__ == "__main__":
    main()
