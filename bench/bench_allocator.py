"""Heap reuse (blockcert.allocator) vs glibc's defaults on certify.py's evaluation loop.

python bench/bench_allocator.py [--model smollm2] [--prompts 96]

Runs the same workload in two fresh child processes, one with keep_freed_memory() (what
train.py, certify.py and edit.py do) and one with BLOCKCERT_MALLOC=system (glibc's defaults):
the teacher loaded once, then twice over the held-out prompts the loop certify.py runs for the
trajectory and the stitched evaluation: embed, every block, the head, fp64 log-softmax of the
logits. Prints, per child, the loop's wall, user and system seconds, minor page faults and
peak RSS, and the ratio system / kept of wall and system time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def usage() -> dict:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall": time.perf_counter(),
        "user": u.ru_utime,
        "sys": u.ru_stime,
        "faults": u.ru_minflt,
    }


@torch.no_grad()
def evaluation_pass(adapter, ids: torch.Tensor, batch_size: int) -> float:
    total = 0.0
    for start in range(0, len(ids), batch_size):
        h = adapter.embed(ids[start : start + batch_size])
        for k in range(adapter.num_blocks):
            h = adapter.block(k, h)
        logp = torch.log_softmax(adapter.head(h).double(), dim=-1)
        total += float(logp.exp().mul(logp).sum())
    return total


def child(model: str, prompts: int) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from blockcert.allocator import keep_freed_memory
    from blockcert.models.adapters import adapter_for

    kept = keep_freed_memory()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={model}"])
    teacher = instantiate(cfg.model)
    adapter = adapter_for(teacher)
    spec = instantiate(cfg.data)
    ids = spec.build(teacher.tokenizer).heldout[:prompts]
    before = usage()
    for _ in range(2):  # the trajectory, then the stitched run
        evaluation_pass(adapter, ids, spec.batch_size)
    after = usage()
    spent = {k: after[k] - before[k] for k in before}
    spent["kept"] = kept
    spent["tokens"] = ids.numel()
    spent["maxrss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(spent))


def measure(model: str, prompts: int, malloc: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "BLOCKCERT_MALLOC"}
    if malloc is not None:
        env["BLOCKCERT_MALLOC"] = malloc
    args = [sys.executable, __file__, "--child", "--model", model, "--prompts", str(prompts)]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"child ({malloc or 'kept'}) failed:\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.model, args.prompts)
        return
    results = {"kept": measure(args.model, args.prompts, None)}
    results["system"] = measure(args.model, args.prompts, "system")
    tokens = results["kept"]["tokens"]
    print(f"{args.model}: 2 evaluation passes over {tokens} held-out tokens, fresh process each")
    for name, r in results.items():
        print(
            f"{name:>6} (keep_freed_memory() -> {r['kept']}): wall {r['wall']:.1f} s, "
            f"user {r['user']:.1f} s, sys {r['sys']:.1f} s, {r['faults'] / 1e6:.2f} M minor "
            f"faults, peak RSS {r['maxrss_gib']:.2f} GiB"
        )
    kept, system = results["kept"], results["system"]
    print(
        f"system / kept: wall {system['wall'] / kept['wall']:.2f}x, "
        f"sys {system['sys'] / max(kept['sys'], 1e-3):.1f}x, "
        f"faults {system['faults'] / max(kept['faults'], 1):.1f}x"
    )


if __name__ == "__main__":
    main()
