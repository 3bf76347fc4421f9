"""Structured-pruning methods side by side: one budget, one calibration stream, one held-out set.

    python bench/bench_compress.py [--methods all] [--out runs/bench_compress] [OVERRIDE ...]

OVERRIDEs are train.py config overrides on top of `compress=mlp75` (e.g. `model=tiny_llama`,
`data.n_train_prompts=256`, `compress.budget.mlp_fraction=0.6`): every row reads the same
training split (the calibration stream), keeps the same number of MLP neurons over all blocks
(heads kept) and is measured on the same held-out prompts and the stress set. Rows:

  wanda-sp            Wanda's structured variant (|W| x input RMS over a neuron's weights), the
                      same fraction per block, no compensation (An et al., FLAP's baseline)
  flap                fluctuation Var[h_j] ||W_:,j||^2, standardised scores spread the budget
                      over blocks, bias compensation of the removed mean (An et al., AAAI 2024)
  importance + LS     mean squared contribution, least-squares refit of the down projection
                      (Capacity.build's cut and refit, here on the whole stream)
  obs                 structured OBS: greedy removal by the loss increase after re-solving, the
                      remaining weights updated, LS with a bias (ZipLM / SlimGPT)
  alloc + obs         the budget spread by measured sensitivity (s_k: KL of block k's cut alone)
  obs, sequential     OBS on stitched inputs (each block also undoes the earlier blocks' drift)
  recipe              conf/compress/mlp75.yaml: its allocation, pruning and calibration, then
                      the end-to-end KL pass (built on the row above with the same walk)
The teacher-input rows share one walk over the stream (one teacher pass: their wall time is that
walk's, marked shared); the allocation's own pass counts in the rows that use it. Per row:
parameters kept (of the teacher blocks), stitched perplexity delta, KL(teacher || stitched) per
next token and top-1 agreement on the held-out prompts and the stress set, max eps (largest
||g_k(h_k) - h_{k+1}|| over blocks and held-out tokens, teacher inputs) and wall time (the
evaluation not counted). Results go to --out/bench_compress.json, row by row.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from blockcert.atomic import write_text_atomic
from blockcert.cli import quiet_libraries
from blockcert.compress.allocation import allocate_widths
from blockcert.compress.cut import Pruning, cut_neurons, neuron_scores
from blockcert.compress.pipeline import block_fit
from blockcert.compress.recipe import Recipe
from blockcert.compress.scores import standardized_widths
from blockcert.compress.summary import StitchedEvaluator
from blockcert.compress.walk import walk
from blockcert.lit.joint import joint_finetune
from blockcert.models.adapters import adapter_for
from blockcert.models.load import load_teacher
from blockcert.resources import compose_config
from blockcert.surrogate.extract import extract_block

log = logging.getLogger("bench_compress")
ROWS = (
    "wanda-sp",
    "flap",
    "importance + LS",
    "obs",
    "alloc + obs",
    "obs, sequential",
    "recipe",
)
OBS = Pruning("obs", "ls")
TEACHER_ROWS = {
    "wanda-sp": Pruning("wanda_sp", "none"),
    "importance + LS": Pruning("importance", "ls", bias=False),
    "obs": OBS,
}


class Bench:
    def __init__(self, cfg, methods: list[str], stress: bool):
        self.cfg, self.methods = cfg, methods
        sections = ("model", "data", "compress")
        self.config = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in sections}
        self.config["seed"] = cfg.seed
        teacher = load_teacher(cfg.model)
        self.adapter = adapter_for(teacher)
        self.prompts = instantiate(cfg.data).build(teacher.tokenizer)
        self.recipe: Recipe = instantiate(cfg.compress, _convert_="all")
        cal = self.recipe.calibration
        self.ids = self.prompts.train[: cal.prompts] if cal.prompts else self.prompts.train
        self.blocks = list(range(self.adapter.num_blocks))
        fulls = [extract_block(self.adapter, k) for k in self.blocks]
        budget = self.recipe.budget
        self.flat = budget.flat(fulls, self.blocks, self.recipe.bias_params * self.adapter.d_model)
        start = time.perf_counter()
        self.evaluate = StitchedEvaluator(self.adapter, self.prompts.heldout, stress=stress)
        log.info(
            "teacher trajectories of the evaluation prompts: %.0f s", time.perf_counter() - start
        )
        self.surrogates: dict[str, dict] = {}
        self.seconds: dict[str, float] = {}

    def allocation(self, pruning: Pruning):
        alloc = dataclasses.replace(self.recipe.allocation, kind="sensitivity")
        return allocate_widths(
            self.adapter, self.ids, self.flat, alloc, pruning, self.recipe.calibration.batch_size
        )

    def _walk(self, fit, inputs: str, stitched_weight: float = 1.0) -> dict:
        """One calibration walk over the stream: every row reads the same prompts and blocks
        (stitched_weight as blockcert.compress.walk.walk's default)."""
        return walk(
            self.adapter,
            self.ids,
            self.blocks,
            fit,
            inputs=inputs,
            stitched_weight=stitched_weight,
            batch_size=self.recipe.calibration.batch_size,
        )

    def teacher_walk(self) -> None:
        """One teacher-input walk: the flat rows cut as it goes, FLAP after it (its widths need
        every block's scores), alloc + obs at the allocation's widths."""
        wanted = [m for m in self.methods if m in (*TEACHER_ROWS, "flap", "alloc + obs")]
        if not wanted:
            return
        obs = OBS
        alloc_widths, alloc_seconds = None, 0.0
        if "alloc + obs" in wanted or "recipe" in self.methods:
            alloc_widths = self.allocation(obs)
            alloc_seconds = alloc_widths.seconds
            wanted = list(dict.fromkeys([*wanted, "alloc + obs"]))
        rows = {m: {} for m in wanted}
        kept_stats = {}

        def fit(cal):
            k, full = cal.block, cal.full
            stats = cal.mlp(full)
            for name, pruning in TEACHER_ROWS.items():
                if name in rows:
                    rows[name][k] = cut_neurons(full, stats, self.flat.neurons[k], pruning)
            if alloc_widths is not None:
                rows["alloc + obs"][k] = cut_neurons(full, stats, alloc_widths.neurons[k], obs)
            if "flap" in rows:
                kept_stats[k] = (full, stats)
            return full

        start = time.perf_counter()
        self._walk(fit, "teacher")
        shared = time.perf_counter() - start
        if "flap" in rows:
            scores = [neuron_scores(*kept_stats[k], "fluctuation") for k in self.blocks]
            floor = round(self.recipe.allocation.floor_fraction * min(self.flat.neurons.values()))
            widths = standardized_widths(scores, sum(self.flat.neurons.values()), max(1, floor))
            flap = Pruning("fluctuation", "mean")
            for k, width in zip(self.blocks, widths, strict=True):
                rows["flap"][k] = cut_neurons(*kept_stats[k], width, flap)
            kept_stats.clear()
        for name, surrogates in rows.items():
            self.surrogates[name] = surrogates
            self.seconds[name] = shared + (alloc_seconds if name == "alloc + obs" else 0.0)

    def sequential(self) -> None:
        obs = OBS

        def fit(cal):
            return cut_neurons(cal.full, cal.mlp(cal.full), self.flat.neurons[cal.block], obs)

        start = time.perf_counter()
        self.surrogates["obs, sequential"] = self._walk(fit, "stitched")
        self.seconds["obs, sequential"] = time.perf_counter() - start

    def recipe_walk(self) -> tuple[dict, float]:
        """The recipe's walk: the alloc + obs row's when the recipe makes that same walk."""
        r = self.recipe
        same = (r.allocation.kind, r.calibration.inputs, r.pruning) == (
            "sensitivity",
            "teacher",
            OBS,
        )
        if same and "alloc + obs" in self.surrogates and not r.calibration.refit_attention:
            return self.surrogates["alloc + obs"], self.seconds["alloc + obs"]
        start = time.perf_counter()
        widths = allocate_widths(
            self.adapter, self.ids, self.flat, r.allocation, r.pruning, r.calibration.batch_size
        )
        fit = block_fit(r, widths, r.budget.rank(self.adapter.d_model))
        walked = self._walk(fit, r.calibration.inputs, r.calibration.stitched_weight)
        return walked, time.perf_counter() - start

    def recipe_row(self) -> None:
        """The recipe's walk, then its end-to-end KL pass."""
        walked, seconds = self.recipe_walk()
        e2e = self.recipe.e2e
        start = time.perf_counter()
        self.surrogates["recipe"] = (
            joint_finetune(
                self.adapter,
                walked,
                self.prompts.train[: e2e.prompts],
                batch_size=e2e.batch_size,
                max_epochs=e2e.epochs,
                lr=e2e.lr,
                block_weight=e2e.block_weight,
                seed=self.cfg.seed,
                progress=True,
            )
            if e2e.prompts
            else walked
        )
        self.seconds["recipe"] = seconds + time.perf_counter() - start

    def run(self, out: Path) -> list[dict]:
        self.teacher_walk()
        if "obs, sequential" in self.methods:
            self.sequential()
        if "recipe" in self.methods:
            self.recipe_row()
        results = []
        for name in (m for m in ROWS if m in self.methods):
            result = {"method": name, "seconds": self.seconds[name]}
            result.update(self.evaluate(self.surrogates[name]))
            results.append(result)
            h = result["heldout"]
            log.info(
                "%s: ppl %+.3f, KL %.4f, top-1 %.2f%%, max eps %.4g, params %.1f%%, %.0f s",
                name,
                h["ppl_delta"],
                h["kl_mean"],
                100 * h["top1_agreement"],
                h["eps_max"],
                100 * result["params"]["fraction"],
                result["seconds"],
            )
            payload = {
                "config": self.config,
                "n_calibration_tokens": self.ids.numel(),
                "results": results,
            }
            write_text_atomic(out / "bench_compress.json", json.dumps(payload, indent=1))
        return results


def table(results: list[dict]) -> str:
    lines = [
        "| method | params kept | ppl Δ | KL (nats) | top-1 | stress ppl Δ | stress KL | "
        "stress top-1 | max ε | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    nan = {"ppl_delta": float("nan"), "kl_mean": float("nan"), "top1_agreement": float("nan")}
    for r in results:
        h, s = r["heldout"], r.get("stress") or nan
        lines.append(
            f"| {r['method']} | {r['params']['fraction']:.1%} | {h['ppl_delta']:+.3f} | "
            f"{h['kl_mean']:.4f} | {h['top1_agreement']:.2%} | {s['ppl_delta']:+.3f} | "
            f"{s['kl_mean']:.4f} | {s['top1_agreement']:.2%} | {h['eps_max']:.4g} | "
            f"{r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="all", help=f"all or a comma list of {ROWS}")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_compress"))
    parser.add_argument("--no-stress", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s")
    cfg = compose_config("train", ["compress=mlp75", *args.overrides])
    methods = list(ROWS) if args.methods == "all" else args.methods.split(",")
    unknown = sorted(set(methods) - set(ROWS))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {', '.join(ROWS)}")
    torch.manual_seed(cfg.seed)
    results = Bench(cfg, methods, stress=not args.no_stress).run(args.out)
    print(table(results))
    h = results[0]["heldout"]
    print(
        f"teacher ppl {h['ppl_baseline']:.3f} on {h['n_prompts']} held-out prompts "
        f"({h['n_targets']} targets); calibration: the first "
        f"{cfg.compress.calibration.prompts or cfg.data.n_train_prompts} training prompts"
    )


if __name__ == "__main__":
    main()
