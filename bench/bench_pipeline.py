"""The whole-model pipeline on the embedded SmolLM2: load, one-pass capture, fit, peak memory.

python bench/bench_pipeline.py [--model smollm2] [--block 12] [--runs] [--certify]
    [--override K=V] [--certify-override K=V]

In this process (default data: 96 held-out prompts of 128 tokens):
- teacher load time;
- capture of every block's held-out pairs in ONE teacher pass (into a fresh cache) vs one plain
  full forward pass of the HF model (blocks + final norm + LM head) over the same tokens, and
  vs embed + every block without the head; ratio capture / full forward (target <= 1.3);
- per block: extraction time, distillation tokens/s (forward + backward + AdamW on cached
  pairs at the default capacity) and certificate time, on `--block`.
With --runs, as a user runs them (fresh caches): `train.py block=K surrogate.full_capacity=true`
and `train.py blocks=all surrogate.full_capacity=true`, each with its wall time and peak RSS
(ratio target <= 2); with --certify also `certify.py` over the blocks= run with no other
option, and the total of train + certify (target <= 180 s), certify's stage split from its
report. The runs use the defaults a user gets (docs/whole-model.md); --override and
--certify-override add options.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

REPO = Path(__file__).resolve().parents[1]


def config(model: str, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=[f"model={model}", *overrides])


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


@torch.no_grad()
def full_forward(adapter, ids: torch.Tensor, batch_size: int) -> None:
    for start in range(0, len(ids), batch_size):
        adapter.teacher.model(ids[start : start + batch_size])


@torch.no_grad()
def blocks_forward(adapter, ids: torch.Tensor, batch_size: int) -> None:
    for start in range(0, len(ids), batch_size):
        h = adapter.embed(ids[start : start + batch_size])
        for k in range(adapter.num_blocks):
            h = adapter.block(k, h)


def distil_tokens_per_s(surrogate, pairs, optim: dict, steps: int) -> float:
    from blockcert.lit.module import SurrogateModule

    module = SurrogateModule(surrogate, **optim)
    optimizer = torch.optim.AdamW(module.params.values(), lr=optim["lr"])
    x_in, x_out = pairs[0]
    module.update_scale.fill_((x_out - x_in).pow(2).sum(-1).mean())
    tokens, start = 0, time.perf_counter()
    for step in range(steps):
        x_in, x_out = pairs[step % len(pairs)]
        loss, _ = module.loss(x_in, x_out)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        tokens += x_in.shape[0] * x_in.shape[1]
    return tokens / (time.perf_counter() - start)


def in_process(model: str, block: int) -> None:
    from blockcert.capture.store import PairStore
    from blockcert.cert.certificate import CertificateOptions, certify_block
    from blockcert.cert.lipschitz import LipschitzOptions
    from blockcert.lit.data import ResidualPairDataModule
    from blockcert.models.adapters import adapter_for
    from blockcert.surrogate.capacity import reduce
    from blockcert.surrogate.extract import extract_block

    cfg = config(model)
    teacher, load_s = timed(instantiate, cfg.model)
    adapter = adapter_for(teacher)
    print(f"teacher load ({model}): {load_s:.1f} s")
    spec = instantiate(cfg.data)
    prompts = spec.build(teacher.tokenizer)
    ids, batch = prompts.heldout, spec.batch_size
    _ = teacher.weights_sha256  # hashed once per process, as in a run
    n_tokens = ids.numel()

    _, forward_s = timed(full_forward, adapter, ids, batch)
    _, blocks_s = timed(blocks_forward, adapter, ids, batch)
    with tempfile.TemporaryDirectory() as cache:
        store = PairStore(adapter, cache, batch)
        blocks = list(range(adapter.num_blocks))
        _, capture_s = timed(store.capture, blocks, "heldout", ids)
        size = sum(f.stat().st_size for f in Path(cache).rglob("*.safetensors"))
    print(f"held-out tokens: {n_tokens} ({len(ids)} prompts x {ids.shape[1]})")
    rate = n_tokens / forward_s
    print(f"full forward (HF model, with LM head): {forward_s:.1f} s ({rate:.0f} tokens/s)")
    print(f"embed + {adapter.num_blocks} blocks (no head): {blocks_s:.1f} s")
    print(
        f"capture of all {adapter.num_blocks} blocks in one pass: {capture_s:.1f} s, "
        f"{size / 2**30:.2f} GiB written; ratio to the full forward {capture_s / forward_s:.2f}x "
        f"(target <= 1.3), to the blocks alone {capture_s / blocks_s:.2f}x"
    )

    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as run_dir:
        # 64 training prompts are enough to time a training step (the importance cut reads 16
        # batches); the full split would cost a capture of 512 prompts through 0..block
        few = dataclasses.replace(prompts, train=prompts.train[:64])
        datamodule = ResidualPairDataModule(adapter, block, few, batch_size=batch, cache_root=cache)
        store = datamodule.store
        _, capture_train_s = timed(store.capture, [block], "train", few.train)
        full, extract_s = timed(extract_block, adapter, block)
        capacity = instantiate(cfg.surrogate)
        inputs = datamodule.sample_inputs(capacity.importance_batches)
        surrogate, reduce_s = timed(reduce, full, capacity, inputs)
        pairs = list(itertools.islice(datamodule.train_set, 8))
        tps = distil_tokens_per_s(surrogate, pairs, dict(cfg.optim), steps=16)
        _, cert_s = timed(
            certify_block,
            full,
            datamodule,
            Path(run_dir),
            CertificateOptions.from_config(cfg.callbacks.certificate),
            LipschitzOptions.from_config(cfg.lipschitz),
            {},
        )
    print(f"block {block}: extraction {extract_s:.2f} s; importance cut + refit {reduce_s:.1f} s")
    print(f"block {block}: distillation {tps:.0f} train tokens/s (forward + backward + AdamW)")
    epoch_s = prompts.train.numel() / tps
    print(f"block {block}: one epoch over {prompts.train.numel()} train tokens ~ {epoch_s:.0f} s")
    print(f"block {block}: certificate of the exact block (metrics + Lipschitz) {cert_s:.1f} s")
    print(f"(train pairs of block {block} alone, blocks 0..{block} run: {capture_train_s:.1f} s)")


def run_measured(args: list[str], env: dict) -> tuple[float, float, int, str]:
    """(wall s, peak RSS GiB, exit code, output tail) of one entry script run."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    return wall, usage.ru_maxrss / 2**20, os.waitstatus_to_exitcode(status), output[-2000:]


def runs(
    model: str, block: int, certify: bool, overrides: list[str], certify_overrides: list[str]
) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    with tempfile.TemporaryDirectory() as tmp:
        common = [f"model={model}", f"runs_root={tmp}/runs", "surrogate.full_capacity=true"]
        common += overrides
        single = ["train.py", f"block={block}", f"cache.root={tmp}/cache1", *common]
        every = ["train.py", "blocks=all", f"cache.root={tmp}/cache2", *common]
        results = {}
        for name, args in (("single block", single), ("blocks=all", every)):
            wall, rss, code, tail = run_measured(args, env)
            if code != 0:
                raise SystemExit(f"{' '.join(args)} failed ({code}):\n{tail}")
            results[name] = (wall, rss)
            print(f"python {' '.join(args)}: {wall:.1f} s wall, peak RSS {rss:.2f} GiB")
        ratio = results["blocks=all"][1] / results["single block"][1]
        print(f"peak RSS blocks=all / single block: {ratio:.2f}x (target <= 2)")
        if certify:
            (run_dir,) = Path(tmp, "runs", model, "blocks").iterdir()
            args = ["certify.py", f"model={model}", f"runs={run_dir}", f"out={tmp}/report"]
            args += certify_overrides
            wall, rss, code, tail = run_measured(args, env)
            print(
                f"python {' '.join(args)}: {wall:.1f} s wall (exit {code}), peak RSS {rss:.2f} GiB"
            )
            report = Path(tmp, "report", "certify_report.json")
            if report.is_file():
                stages = json.loads(report.read_text()).get("timing_s", {})
                print("certify stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items()))
            total = results["blocks=all"][0] + wall
            print(f"train blocks=all + certify: {total:.1f} s (target <= 180 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--block", type=int, default=12)
    parser.add_argument("--runs", action="store_true", help="also time train.py runs (RSS)")
    parser.add_argument("--certify", action="store_true", help="with --runs: certify.py too")
    parser.add_argument("--skip-in-process", action="store_true")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="extra train.py override for --runs, e.g. --override data.n_heldout_prompts=16",
    )
    parser.add_argument(
        "--certify-override", action="append", default=[], help="extra certify.py override"
    )
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    if not args.skip_in_process:
        in_process(args.model, args.block)
    if args.runs:
        runs(args.model, args.block, args.certify, args.override, args.certify_override)


if __name__ == "__main__":
    main()
