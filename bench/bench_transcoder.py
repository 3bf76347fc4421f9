"""Transcoder vs pruned surrogate of (about) the same parameter count, on the same block.

    python train.py block=12 surrogate=transcoder surrogate.width=1536 surrogate.k=32 ...
    python train.py block=12 surrogate.head_fraction=1.0 surrogate.mlp_fraction=0.6667 ...
    python bench/bench_transcoder.py RUN_TRANSCODER RUN_PRUNED [--model smollm2] [--prompts 32]
        [--prompt "text" --new-tokens 24]

Both runs are verified (blockcert.verify.claims.verify_artifacts: hashes, IR template, params)
before anything is measured. Per surrogate, on the run's held-out prompts (the first --prompts):
  eps_max, rel mean / max   per-token ||g(h) - f(h)|| on teacher inputs h (and / ||f(h)||)
  FVU                       sum ||mlp_g(h) - mlp_f(h)||^2 / sum ||mlp_f(h) - mean||^2 (MLP output)
  ppl delta                 one-block stitched model (this block replaced) minus the teacher
With --prompt, the teacher and the transcoder-stitched transformers model (blockcert.stitched)
each generate --new-tokens greedy tokens after it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from blockcert.evaluate.trajectory import stitched_evaluation, teacher_trajectory
from blockcert.models.adapters import adapter_for
from blockcert.stitched import load_teacher, stitch
from blockcert.surrogate.extract import extract_block
from blockcert.surrogate.interpret import run_graph
from blockcert.surrogate.view import BlockView
from blockcert.verify.claims import TeacherFacts, verify_artifacts
from blockcert.verify.collect import certificates_per_block


def verified_run(teacher, run: Path, facts: TeacherFacts):
    ((block, (path, certificate)),) = certificates_per_block(run, teacher.name).items()
    return block, verify_artifacts(path, certificate, facts)


@torch.no_grad()
def measure(adapter, block: int, surrogate, states, ids, batch: int) -> dict:
    full = extract_block(adapter, block)
    keep = (BlockView.MLP_OUT,)
    err, rel, later, residual, targets = [], [], [], 0.0, []
    for start in range(0, len(ids), batch):
        x, y = states[block][start : start + batch], states[block + 1][start : start + batch]
        pred, mine = run_graph(surrogate.graph, surrogate.weights, x, keep=keep)
        _, ref = run_graph(full.graph, full.weights, x, keep=keep)
        e = (pred - y).double().norm(dim=-1)
        later.append(e[:, 1:].flatten())  # without position 0 (the attention-sink token)
        e = e.flatten()
        err.append(e)
        rel.append(e / y.double().norm(dim=-1).flatten())
        target = ref[BlockView.MLP_OUT].double().reshape(-1, y.shape[-1])
        residual += float(
            (mine[BlockView.MLP_OUT].double().reshape(target.shape) - target).pow(2).sum()
        )
        targets.append(target)
    target = torch.cat(targets)
    err, rel = torch.cat(err), torch.cat(rel)
    stitched = stitched_evaluation(adapter, {block: surrogate}, ids, states, batch)
    return {
        "params": surrogate.num_params,
        "eps_max": float(err.max()),
        "mean": float(err.mean()),
        "eps_max_after_first": float(torch.cat(later).max()),
        "rel_mean": float(rel.mean()),
        "rel_max": float(rel.max()),
        "fvu": residual / float((target - target.mean(0)).pow(2).sum()),
        "ppl_base": stitched.ppl_baseline,
        "ppl_delta": stitched.ppl_delta,
        "kl": stitched.kl_mean,
        "top1": stitched.top1_agreement,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("transcoder", type=Path)
    parser.add_argument("pruned", type=Path)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", default=None)
    parser.add_argument("--new-tokens", type=int, default=24)
    args = parser.parse_args()
    start = time.perf_counter()
    teacher = load_teacher(args.model)
    adapter = adapter_for(teacher)
    facts = TeacherFacts.of(teacher)
    params = facts.block_params
    runs = {
        name: verified_run(teacher, run, facts)
        for name, run in (("transcoder", args.transcoder), ("pruned", args.pruned))
    }
    blocks = {block for block, _ in runs.values()}
    if len(blocks) != 1:
        raise SystemExit(f"the runs certify different blocks {sorted(blocks)}")
    (block,) = blocks
    ids = runs["transcoder"][1].heldout[: args.prompts]
    states = teacher_trajectory(adapter, ids, args.batch)
    rows = {}
    for name, (_, verified) in runs.items():
        rows[name] = measure(adapter, block, verified.surrogate, states, ids, args.batch)
        rows[name]["capacity"] = verified.surrogate.graph.capacity
    teacher_params = params[block]
    print(
        f"{teacher.name} block {block}: {ids.numel()} held-out tokens ({len(ids)} prompts), "
        f"teacher block {teacher_params} params, teacher ppl {rows['pruned']['ppl_base']:.4f}"
    )
    print(
        "| surrogate | params | eps_max | eps_max t>0 | mean err | rel mean | rel max | "
        "FVU (MLP out) | ppl delta (1 block) | KL | top-1 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        cap = r["capacity"]
        label = (
            f"transcoder w={cap['transcoder_width']} k={cap['k']}"
            if name == "transcoder"
            else f"pruned mlp {cap['mlp_width']}/{cap['teacher_mlp_width']}, "
            f"heads {cap['heads']}/{cap['teacher_heads']}"
        )
        print(
            f"| {label} | {r['params']} ({r['params'] / teacher_params:.1%}) | "
            f"{r['eps_max']:.4g} | {r['eps_max_after_first']:.4g} | {r['mean']:.4g} | "
            f"{r['rel_mean']:.3%} | {r['rel_max']:.3%} | "
            f"{r['fvu']:.4f} | {r['ppl_delta']:+.4f} | {r['kl']:.2e} | {r['top1']:.3%} |"
        )
    if args.prompt:
        tok = teacher.tokenizer
        enc = tok(args.prompt, return_tensors="pt")
        gen = dict(max_new_tokens=args.new_tokens, do_sample=False, use_cache=False)
        with torch.no_grad():
            base = teacher.model.generate(**enc, **gen)
            model = stitch(teacher, {block: runs["transcoder"][1].surrogate})
            mine = model.generate(**enc, **gen)
        print(f"\nprompt: {args.prompt!r}")
        print(f"teacher:  {tok.decode(base[0][enc.input_ids.shape[1] :])!r}")
        print(f"stitched: {tok.decode(mine[0][enc.input_ids.shape[1] :])!r}")
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
