"""Structured-pruning methods side by side: one budget, one calibration stream, one held-out set.

    python bench/bench_compress.py [--methods all] [--out runs/bench_compress] [OVERRIDE ...]

OVERRIDEs are train.py config overrides on top of `compress=mlp75` (e.g. `model=tiny_llama`,
`data.n_train_prompts=256`, `compress.budget.mlp_fraction=0.6`): every row reads the same
training split (the calibration stream), keeps the same number of MLP neurons over all blocks
(heads kept) and is measured on the same held-out prompts and the stress set. Rows:

  wanda-sp            Wanda's structured variant (|W| x input norm over a neuron's weights),
                      the same fraction per block, no compensation (An et al., FLAP baselines)
  flap                fluctuation Var[h_j] ||W_:,j||^2, standardised scores spread the budget
                      over blocks, bias compensation of the removed mean (FLAP, AAAI 2024)
  importance + LS     mean squared contribution, then the least-squares refit of the down
                      projection (this repository's Capacity.build, on the streamed data)
  obs                 structured OBS: greedy removal with the Hessian's inverse, remaining
                      weights updated (ZipLM / SlimGPT), LS with a bias
  obs, sequential     the same on stitched inputs (each block undoes the earlier blocks' drift)
  alloc + obs         the budget spread by measured sensitivity (s_k: KL of block k's cut alone)
  alloc + obs, seq.   both
  recipe              conf/compress/mlp75.yaml as train.py runs it (its allocation, pruning,
                      calibration and end-to-end pass)
Per row: parameters kept (of the teacher blocks), stitched perplexity delta, KL(teacher ||
stitched) per next token, top-1 agreement (held-out and stress), max eps (largest
||g_k(h_k) - h_{k+1}|| over blocks and held-out tokens, teacher inputs) and the row's wall time
(allocation + walk + end-to-end; the held-out evaluation is not counted). Each row's surrogates
are kept under --out/<row>/compress/ (a rerun resumes); results go to --out/bench_compress.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from blockcert.atomic import write_text_atomic
from blockcert.cli import CONF_DIR, quiet_libraries
from blockcert.compress.pipeline import RunState, stage_e2e, stage_walk, stage_widths
from blockcert.compress.recipe import Recipe
from blockcert.compress.summary import StitchedEvaluator
from blockcert.models.adapters import adapter_for

log = logging.getLogger("bench_compress")


def _variant(base: Recipe, allocation=None, pruning=None, inputs=None, e2e=True) -> Recipe:
    out = base
    if allocation is not None:
        out = dataclasses.replace(out, allocation=dataclasses.replace(out.allocation, **allocation))
    if pruning is not None:
        out = dataclasses.replace(out, pruning=dataclasses.replace(out.pruning, **pruning))
    if inputs is not None:
        calibration = dataclasses.replace(out.calibration, inputs=inputs)
        out = dataclasses.replace(out, calibration=calibration)
    if not e2e:
        out = dataclasses.replace(out, e2e=dataclasses.replace(out.e2e, prompts=0))
    return out


def rows(base: Recipe, n_calibration: int) -> dict[str, Recipe]:
    flat, sensitivity = {"kind": "flat"}, {"kind": "sensitivity"}
    # FLAP standardises scores measured on the whole calibration stream
    standardized = {"kind": "standardized", "prompts": n_calibration}
    obs = {"select": "obs", "update": "ls", "bias": True}
    return {
        "wanda-sp": _variant(
            base, flat, {"select": "wanda_sp", "update": "none"}, "teacher", e2e=False
        ),
        "flap": _variant(
            base, standardized, {"select": "fluctuation", "update": "mean"}, "teacher", e2e=False
        ),
        "importance + LS": _variant(
            base, flat, {"select": "importance", "update": "ls", "bias": False}, "teacher", False
        ),
        "obs": _variant(base, flat, obs, "teacher", e2e=False),
        "obs, sequential": _variant(base, flat, obs, "stitched", e2e=False),
        "alloc + obs": _variant(base, sensitivity, obs, "teacher", e2e=False),
        "alloc + obs, sequential": _variant(base, sensitivity, obs, "stitched", e2e=False),
        "recipe": base,
    }


def run_row(name: str, recipe: Recipe, setup, out: Path, seed: int) -> tuple[dict, float]:
    """(surrogates, seconds) of one row; stages resume from out/<name>/compress/."""
    adapter, prompts, blocks = setup
    state = RunState(out / name.replace(" ", "").replace(",", "_").replace("+", "_"))
    state.claim({"recipe": recipe.to_dict(), "blocks": blocks})
    start = time.perf_counter()
    widths = stage_widths(state, recipe, adapter, prompts, blocks)
    walked = stage_walk(state, recipe, adapter, prompts, blocks, widths)
    final = stage_e2e(state, recipe, adapter, prompts, walked, seed)
    return final, time.perf_counter() - start


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
    parser.add_argument("--methods", default="all", help="all or a comma list of row names")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_compress"))
    parser.add_argument("--no-stress", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["compress=mlp75", *args.overrides])
    torch.manual_seed(cfg.seed)
    teacher = instantiate(cfg.model)
    adapter = adapter_for(teacher)
    prompts = instantiate(cfg.data).build(teacher.tokenizer)
    blocks = list(range(adapter.num_blocks))
    base = instantiate(cfg.compress, _convert_="all")
    n_calibration = base.calibration.prompts or len(prompts.train)
    chosen = rows(base, n_calibration)
    if args.methods != "all":
        chosen = {name: chosen[name] for name in args.methods.split(",")}
    start = time.perf_counter()
    evaluate = StitchedEvaluator(adapter, prompts.heldout, stress=not args.no_stress)
    log.info("teacher trajectories of the evaluation prompts: %.0f s", time.perf_counter() - start)
    results = []
    for name, recipe in chosen.items():
        surrogates, seconds = run_row(name, recipe, (adapter, prompts, blocks), args.out, cfg.seed)
        result = {"method": name, "seconds": seconds, **evaluate(surrogates)}
        result["recipe"] = recipe.to_dict()
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
            seconds,
        )
        payload = {
            "overrides": args.overrides,
            "config": OmegaConf.to_container(cfg.data, resolve=True),
            "results": results,
        }
        write_text_atomic(args.out / "bench_compress.json", json.dumps(payload, indent=1))
    print(table(results))
    h = results[0]["heldout"]
    print(
        f"teacher ppl {h['ppl_baseline']:.3f} on {h['n_prompts']} held-out prompts "
        f"({h['n_targets']} targets)"
    )


if __name__ == "__main__":
    main()
