"""Sound vs empirical Lipschitz constants per block of a teacher (full-capacity surrogates).

    python bench/bench_lipschitz.py --model smollm2 --prompts 8 --radius-fraction 1e-3 [--shells 16]

For every block k: g_k = extract_block(adapter, k), inputs h_k on held-out Shakespeare prompts
(capture.prompts.build_prompts, conf/data/shakespeare.yaml), r = radius_fraction * median ||h_k||.
Prints sound L (exact-arithmetic upper bound), empirical L (gradient-ascent lower estimate), their
ratio, the saturation constant a_k, and the measured fp32-vs-float64 error at the tube centre.
--shells N cuts each tube into N shells (blockcert.cert.lipschitz.shells: tighter, N times the
cost); --refine-tokens N caps the tokens per prompt whose MLP bound uses the spectral norm
(default: all that can decide the max); --joint-tokens N|all gives that many rows per prompt the
joint attention bound (blockcert.cert.lipschitz.attention_joint; default all, 0: none), and the
sound L without it is printed beside it (--no-baseline skips that). The empirical L is projected
ascent on the max over tokens, then --targeted-tokens N (default 4) tokens per prompt ascended on
alone (blockcert.cert.lipschitz.empirical; 0: the max alone).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blockcert.capture.corpus import ShakespeareCorpus  # noqa: E402
from blockcert.capture.prompts import build_prompts  # noqa: E402
from blockcert.cert.fp_allowance import fp_error  # noqa: E402
from blockcert.cert.lipschitz import empirical_lipschitz, sound_lipschitz  # noqa: E402
from blockcert.evaluate.trajectory import teacher_trajectory  # noqa: E402
from blockcert.models.adapters import adapter_for  # noqa: E402
from blockcert.models.load import load_teacher_by_name as load_teacher  # noqa: E402
from blockcert.surrogate.extract import extract_block  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--radius-fraction", type=float, default=1e-3)
    ap.add_argument("--blocks", default="all")
    ap.add_argument("--empirical-prompts", type=int, default=4)
    ap.add_argument("--restarts", type=int, default=5)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--targeted-tokens", type=int, default=4, help="tokens ascended on alone")
    ap.add_argument("--shells", type=int, default=1, help="tube shells of the sound bound")
    ap.add_argument("--refine-tokens", type=int, default=None, help="spectral MLP bound cap")
    ap.add_argument("--joint-tokens", default="all", help="rows with the joint bound (all, N)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the sound L without joint")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    joint = None if args.joint_tokens == "all" else int(args.joint_tokens)
    torch.set_num_threads(2)
    teacher = load_teacher(args.model)
    adapter = adapter_for(teacher)
    split = build_prompts(
        ShakespeareCorpus(), teacher.tokenizer, args.seq_len, 64, args.prompts, seed=0
    )
    states = teacher_trajectory(adapter, split.heldout, batch_size=8)
    blocks = range(adapter.num_blocks) if args.blocks == "all" else map(int, args.blocks.split(","))
    rows = []
    print("block | sound L (no joint) | sound L | empirical L | ratio | a_k | fp32 err | r | s")
    for k in blocks:
        t0 = time.time()
        x = states[k]
        surrogate = extract_block(adapter, k)
        r = args.radius_fraction * float(x.norm(dim=-1).median())
        prompts = [x[i : i + 1] for i in range(len(x))]
        baseline = None
        if not args.no_baseline:
            baseline = sound_lipschitz(
                surrogate, prompts, r, args.shells, args.refine_tokens, joint_tokens=0
            ).value
        sound = sound_lipschitz(
            surrogate, prompts, r, args.shells, args.refine_tokens, joint_tokens=joint
        )
        emp = empirical_lipschitz(
            surrogate,
            x[: args.empirical_prompts],
            r,
            random_trials=4,
            ascent_steps=args.steps,
            restarts=args.restarts,
            seed=k,
            targeted_tokens=args.targeted_tokens,
        )
        fp = fp_error(surrogate, [x])
        row = {
            "block": k,
            "radius": r,
            "sound_no_joint": baseline,
            "sound": sound.value,
            "empirical": emp.value,
            "ratio": None if sound.value is None else sound.value / emp.value,
            "saturation": sound.parts["saturation"],
            "attention": sound.parts["attention"],
            "mlp": sound.parts["mlp"],
            "refined": sound.parts["refined"],
            "fp32_error": fp,
            "max_norm": float(x.norm(dim=-1).max()),
            "seconds": time.time() - t0,
        }
        rows.append(row)
        print(
            f"{k} | {baseline or float('nan'):.4g} | {row['sound']:.4g} | {row['empirical']:.4g} | "
            f"{row['ratio']:.3g} | "
            f"{row['saturation']:.4g} | {fp:.3g} | {r:.3g} | {row['seconds']:.0f}",
            flush=True,
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
