"""Certificates and certify reports of two checkouts, compared value for value.

    python bench/check_reports_identical.py --checkout DIR --write before.json
    python bench/check_reports_identical.py --checkout . --compare before.json

Runs, in the given checkout (its own train.py and certify.py, its own src on the path), with one
fixed seed: tiny_llama blocks 0-3 (reduced capacity) and SmolLM2 block 12 (reduced capacity, a
small token budget), each trained, then certified with a fixed verifier seed. It dumps every
number a certificate claims (metrics, coverage, Lipschitz values, surrogate hashes, held-out
ids) and every number of the report (bound, per-block rows, stitched figures, the statement
about fresh prompts) as exact float hex, and compares two dumps to the bit. Fields that name a
time, a path or the code version are left out; so is the resolved config, whose keys moved.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RUNS = {
    "tiny_llama": (
        [
            "model=tiny_llama",
            "blocks=[0,1,2,3]",
            "data.n_train_prompts=16",
            "data.n_heldout_prompts=8",
            "data.seq_len=32",
        ],
        "blocks",
    ),
    "smollm2": (
        ["block=12", "data.n_train_prompts=16", "data.n_heldout_prompts=8", "data.seq_len=64"],
        "block12",
    ),
}
TRAIN = [
    "surrogate.head_fraction=0.75",
    "surrogate.mlp_fraction=0.75",
    "trainer.max_epochs=1",
    "logger=csv",
]
CERTIFY = [
    "lean.build=false",
    "verifier.seed=11",
    "verifier.n_prompts=8",
    "statistics.calibration_prompts=40",
    "statistics.check_prompts=20",
    "statistics.shift_prompts=4",
]
DROP = {
    "created_at",
    "code",
    "config",
    "certificate_sha256",
    "path",
    "file",
    "files",
    "timing_s",
    "certificates",
    "message",
    "toolchain",
    "pairs_source",
    "report",
}


def exact(value):
    """Floats as hex (equal to the bit or not), everything else as it is, without DROP keys."""
    if isinstance(value, float):
        return value.hex()
    if isinstance(value, dict):
        return {k: exact(v) for k, v in sorted(value.items()) if k not in DROP}
    if isinstance(value, list):
        return [exact(v) for v in value]
    return value


def _lipschitz_overrides(checkout: Path) -> list[str]:
    """The same train-time constants in either layout of the options (sound on 2 prompts)."""
    if (checkout / "conf" / "lipschitz").is_dir():
        return ["lipschitz.sound_prompts=2", "lipschitz.empirical_prompts=0"]
    return ["callbacks.certificate.sound_prompts=2", "callbacks.certificate.lipschitz_prompts=0"]


def _run(checkout: Path, script: str, args: list[str]) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": f"{checkout / 'src'}:{checkout}",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }
    proc = subprocess.run(
        [sys.executable, str(checkout / script), *args],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{script} failed in {checkout}: {proc.stderr[-2000:]}")


def dump(checkout: Path) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (args, group) in RUNS.items():
            runs = Path(tmp) / name
            _run(
                checkout,
                "train.py",
                [
                    *args,
                    *TRAIN,
                    *_lipschitz_overrides(checkout),
                    f"runs_root={runs}",
                    f"cache.root={tmp}/cache",
                ],
            )
            (run_dir,) = (runs / name / group).iterdir()  # runs/<model>/<group>/<time>
            report_dir = Path(tmp) / f"{name}-report"
            _run(
                checkout,
                "certify.py",
                [
                    f"model={name}",
                    f"runs={run_dir}",
                    f"out={report_dir}",
                    f"lean.root={tmp}/lean",
                    *CERTIFY,
                ],
            )
            certificates = {
                str(p.relative_to(run_dir)): exact(json.loads(p.read_text()))
                for p in sorted(run_dir.rglob("certificate.json"))
            }
            report = json.loads((report_dir / "certify_report.json").read_text())
            out[name] = {"certificates": certificates, "report": exact(report)}
    return out


def differences(a, b, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        found = [f"{where}.{k}: only in one" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            found += differences(a[k], b[k], f"{where}.{k}")
        return found
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (x, y) in pairs for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkout", type=Path, default=Path("."))
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", type=Path)
    group.add_argument("--compare", type=Path)
    args = parser.parse_args()
    values = dump(args.checkout.resolve())
    if args.write:
        args.write.write_text(json.dumps(values, indent=1, sort_keys=True))
        print(f"wrote {args.write}")
        return 0
    found = differences(json.loads(args.compare.read_text()), values)
    count = len(json.dumps(values))
    if found:
        print(f"DIFFERENT in {len(found)} place(s):", *found[:40], sep="\n  ")
        return 1
    print(f"IDENTICAL to the bit ({count} characters of exact values) against {args.compare}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
