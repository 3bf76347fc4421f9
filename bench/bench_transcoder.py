"""Surrogates of one block side by side: pruned MLP, TopK, skip and gated transcoders, ...

    python train.py block=12 surrogate.head_fraction=1.0 surrogate.mlp_fraction=0.6667 ...
    python train.py block=12 surrogate=transcoder surrogate.width=1536 ...
    python train.py block=12 surrogate=transcoder surrogate.skip=true surrogate.width=1248 ...
    python train.py experiment=gated_transcoder block=12
    python bench/bench_transcoder.py pruned=RUN topk=RUN skip=RUN gated=RUN [--model smollm2]
        [--prompts 96] [--prompt "text" --new-tokens 24]

Every run is verified (blockcert.verify.claims.verify_artifacts: hashes, IR template, params)
before anything is measured, and all must certify the same block on the same held-out prompts.
Per surrogate, on those prompts (the first --prompts):
  eps_max, rel mean         per-token ||g(h) - f(h)|| on teacher inputs h (and / ||f(h)||)
  FVU                       sum ||mlp_g(h) - mlp_f(h)||^2 / sum ||mlp_f(h) - mean||^2 (MLP output)
  ppl delta, KL, top-1      one-block stitched model (this block replaced) against the teacher
  L0, dead                  mean latents per token and latents that never fire (transcoders)
  tokens seen, fit time     from the run's training.json (epochs x training tokens; the wall time
                            of the fit with the host's 1-minute load average at its start and end)
With --prompt, the teacher and each transcoder-stitched transformers model (blockcert.stitched)
generate --new-tokens greedy tokens after it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from blockcert.evaluate.trajectory import stitched_evaluation, teacher_trajectory
from blockcert.lit.training_record import TRAINING_JSON
from blockcert.models.adapters import adapter_for
from blockcert.models.load import load_teacher_by_name
from blockcert.stitched import stitch
from blockcert.surrogate.extract import extract_block
from blockcert.surrogate.interpret import run_graph
from blockcert.surrogate.view import BlockView, block_view
from blockcert.verify.claims import TeacherFacts, verify_artifacts
from blockcert.verify.collect import certificates_per_block


def verified_run(teacher, run: Path, facts: TeacherFacts):
    ((block, (path, certificate)),) = certificates_per_block(run, teacher.name).items()
    return block, verify_artifacts(path, certificate, facts)


@torch.no_grad()
def measure(adapter, block: int, surrogate, states, ids, batch: int) -> dict:
    full = extract_block(adapter, block)
    view = block_view(surrogate)
    keep = (BlockView.MLP_OUT, BlockView.HIDDEN)
    err, rel, residual, targets, l0, fired = [], [], 0.0, [], [], None
    for start in range(0, len(ids), batch):
        x, y = states[block][start : start + batch], states[block + 1][start : start + batch]
        pred, mine = run_graph(surrogate.graph, surrogate.weights, x, keep=keep)
        _, ref = run_graph(full.graph, full.weights, x, keep=keep)
        e = (pred - y).double().norm(dim=-1).flatten()
        err.append(e)
        rel.append(e / y.double().norm(dim=-1).flatten())
        target = ref[BlockView.MLP_OUT].double().reshape(-1, y.shape[-1])
        residual += float(
            (mine[BlockView.MLP_OUT].double().reshape(target.shape) - target).pow(2).sum()
        )
        targets.append(target)
        if view.mlp.kind == "transcoder":
            active = mine[BlockView.HIDDEN].reshape(-1, view.mlp.width) != 0  # gated: signed
            l0.append(active.sum(-1).float())
            fired = active.any(0) if fired is None else fired | active.any(0)
    target = torch.cat(targets)
    err, rel = torch.cat(err), torch.cat(rel)
    stitched = stitched_evaluation(adapter, {block: surrogate}, ids, states, batch)
    return {
        "params": surrogate.num_params,
        "eps_max": float(err.max()),
        "mean": float(err.mean()),
        "rel_mean": float(rel.mean()),
        "fvu": residual / float((target - target.mean(0)).pow(2).sum()),
        "ppl_base": stitched.ppl_baseline,
        "ppl_delta": stitched.ppl_delta,
        "kl": stitched.kl_mean,
        "top1": stitched.top1_agreement,
        "l0": float(torch.cat(l0).mean()) if l0 else None,
        "dead": float((~fired).float().mean()) if fired is not None else None,
    }


def label(surrogate) -> str:
    cap, view = surrogate.graph.capacity, block_view(surrogate)
    if view.mlp.kind == "transcoder":
        kind = "skip transcoder" if view.mlp.skip is not None else "TopK transcoder"
        kind = f"gated {kind}" if view.mlp.gated else kind
        return f"{kind} w={cap['transcoder_width']} k={cap['k']}"
    return (
        f"pruned MLP {cap['mlp_width']}/{cap['teacher_mlp_width']}, "
        f"heads {cap['heads']}/{cap['teacher_heads']}"
    )


def training_cells(run: Path) -> tuple[str, str]:
    """(tokens seen, fit time with load) from the run's training.json, '-' where absent."""
    path = next(iter(sorted(run.rglob(TRAINING_JSON))), None)
    if path is None:
        return "-", "-"
    record = json.loads(path.read_text())
    load = "/".join(f"{x:.1f}" for x in record["load_average"])
    return f"{record['tokens_seen']:,}", f"{record['fit_seconds']:.0f} s (load {load})"


def parse_runs(items: list[str]) -> dict[str, Path]:
    runs = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"run {item!r}: give NAME=RUN_DIR")
        runs[name] = Path(path)
    return runs


def print_table(teacher, block, ids, rows, teacher_params) -> None:
    base = next(iter(rows.values()))["ppl_base"]
    print(
        f"{teacher.name} block {block}: {ids.numel()} held-out tokens ({len(ids)} prompts), "
        f"teacher block {teacher_params} params, teacher ppl {base:.4f}"
    )
    print(
        "| run | surrogate | params | FVU (MLP out) | eps_max | mean err | rel mean | "
        "ppl delta (1 block) | KL | top-1 | L0 | dead | tokens seen | fit time |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        l0 = "-" if r["l0"] is None else f"{r['l0']:.1f}"
        dead = "-" if r["dead"] is None else f"{r['dead']:.1%}"
        print(
            f"| {name} | {r['label']} | {r['params']} ({r['params'] / teacher_params:.1%}) | "
            f"{r['fvu']:.4f} | {r['eps_max']:.4g} | {r['mean']:.4g} | {r['rel_mean']:.3%} | "
            f"{r['ppl_delta']:+.4f} | {r['kl']:.2e} | {r['top1']:.3%} | {l0} | {dead} | "
            f"{r['tokens']} | {r['time']} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR, one per surrogate")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", default=None)
    parser.add_argument("--new-tokens", type=int, default=24)
    args = parser.parse_args()
    start = time.perf_counter()
    teacher = load_teacher_by_name(args.model)
    adapter = adapter_for(teacher)
    facts = TeacherFacts.of(teacher)
    runs = {name: verified_run(teacher, run, facts) for name, run in parse_runs(args.runs).items()}
    blocks = {block for block, _ in runs.values()}
    if len(blocks) != 1:
        raise SystemExit(f"the runs certify different blocks {sorted(blocks)}")
    (block,) = blocks
    heldout = [verified.heldout for _, verified in runs.values()]
    if any(not torch.equal(h, heldout[0]) for h in heldout):
        raise SystemExit("the runs certify different held-out prompts; use one data config")
    ids = heldout[0][: args.prompts]
    states = teacher_trajectory(adapter, ids, args.batch)
    rows = {}
    for name, (_, verified) in runs.items():
        rows[name] = measure(adapter, block, verified.surrogate, states, ids, args.batch)
        rows[name]["label"] = label(verified.surrogate)
        rows[name]["tokens"], rows[name]["time"] = training_cells(parse_runs(args.runs)[name])
    print_table(teacher, block, ids, rows, facts.block_params[block])
    if args.prompt:
        tok = teacher.tokenizer
        enc = tok(args.prompt, return_tensors="pt")
        gen = dict(max_new_tokens=args.new_tokens, do_sample=False, use_cache=False)
        with torch.no_grad():
            base = teacher.model.generate(**enc, **gen)
            print(f"\nprompt: {args.prompt!r}")
            print(f"teacher:  {tok.decode(base[0][enc.input_ids.shape[1] :])!r}")
            for name, (_, verified) in runs.items():
                model = stitch(teacher, {block: verified.surrogate})
                mine = model.generate(**enc, **gen)
                print(f"{name}: {tok.decode(mine[0][enc.input_ids.shape[1] :])!r}")
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
