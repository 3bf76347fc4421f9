"""The Lipschitz constants, to the bit: dump them, or compare them with an earlier dump.

    python bench/check_constants_identical.py --write before.json [--no-smollm2]
    python bench/check_constants_identical.py --compare before.json [--no-smollm2]

Computes, with fixed seeds and a fixed thread count, every number the Lipschitz API returns
on a set of cases and writes each float as float.hex() (tensors as their exact hex values, or
the SHA-256 of their bytes where they are large):
- tiny_llama blocks 0-3 and tiny_gpt2 blocks 0-1 (full-capacity surrogates, 3 prompts of 19
  tokens) at several radii: sound_lipschitz's value and parts (one shell; 4 shells with the joint
  rows on every token; 2 shells with a refinement cap and 3 joint rows; the saturated step
  where the centre forward settles it and where it does not),
  the per-token rows of the first prompt (Latt, attention move, MLP screen and tube part, lambda2,
  rho, the bilinear spread, the centre MLP Jacobian coefficients, saturation, Lmlp, the spectral
  and bilinear centre bounds and the per-token constants), empirical_lipschitz with a targeted
  phase, the fp32 allowance and the float64 forward;
- tiny_llama block 1 at reduced capacity (half the heads and MLP neurons), and as a TopK
  transcoder (k = 8: swaps at large radii; k = width: relu latents, finite L);
- SmolLM2 block 12 on one held-out prompt at r = 1e-3 median ||h|| (16 shells, every row joint).
--compare exits 1 and names the first differing entries when any value differs.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blockcert.cert.fp_allowance import fp_error  # noqa: E402
from blockcert.cert.lipschitz import (  # noqa: E402
    empirical_lipschitz,
    fold_block,
    forward64,
    sound_block_bound,
    sound_lipschitz,
    transcoder_block_bound,
)
from blockcert.cert.lipschitz.block import two_pass_rows  # noqa: E402
from blockcert.cert.lipschitz.shells import prompt_constants  # noqa: E402
from blockcert.models.load import load_teacher_by_name as load_teacher  # noqa: E402
from blockcert.surrogate.capacity import Capacity, reduce  # noqa: E402
from blockcert.surrogate.extract import extract_block  # noqa: E402
from blockcert.surrogate.ir import Surrogate  # noqa: E402
from blockcert.surrogate.transcoder import Transcoder  # noqa: E402
from blockcert.surrogate.view import block_view  # noqa: E402

RADII = [1e-3, 1e-1, 0.5]  # times the median token norm of the block's inputs
# (name, sound_lipschitz keyword arguments, radii) run on every tiny block
CONFIGS = [
    ("plain", {}, RADII),
    ("shells4_joint_all", {"shells": 4, "joint_tokens": None}, [1e-2]),
    ("shells2_refine2_joint3", {"shells": 2, "refine_tokens": 2, "joint_tokens": 3}, [1e-1]),
]


def per_token(view, x: torch.Tensor, radius: float, options: dict) -> dict:
    """Every per-token row of one prompt x [T, d], as the block bound computes them."""
    f = fold_block(view)
    cen = forward64(view, x)
    shells = options.get("shells", 1)
    refine = options.get("refine_tokens")
    joint = options.get("joint_tokens", 0)
    rows, lmlp, spec = two_pass_rows(f, cen, radius, shells, refine, 0.0, joint)
    constants = prompt_constants(rows, lmlp, radius)
    out = {name: getattr(rows, name) for name in ("latt", "move", "screen", "pert", "lam2")}
    out.update(rho=rows.rho, spread=rows.spread, z=rows.z, saturation=rows.saturation)
    out.update(lmlp=lmlp, spectral=spec.spectral, bilinear=spec.bilinear, constants=constants)
    return out


def exact(value):
    """Floats as float.hex(), tensors as hex lists (or a SHA-256 of their bytes when large)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().contiguous()
        if value.numel() > 64:
            digest = hashlib.sha256(value.double().numpy().tobytes()).hexdigest()
            return {"shape": list(value.shape), "sha256": digest}
        return [float(v).hex() for v in value.double().reshape(-1).tolist()]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): exact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [exact(v) for v in value]
    return repr(value)


def sound_case(surrogate, x: torch.Tensor, radius: float, options: dict) -> dict:
    """sound_lipschitz's report (every prompt) and the per-token rows of the first prompt."""
    out = {"lipschitz": sound_lipschitz(surrogate, [x], radius, **options).to_dict()}
    if block_view(surrogate).mlp.kind != "transcoder":
        out["prompt0"] = per_token(block_view(surrogate), x[0], radius, options)
    return out


def tiny_block(results: dict, name: str, surrogate, x: torch.Tensor) -> None:
    """Every configuration at every radius, the saturated step, empirical, fp and forward64."""
    median = float(x.norm(dim=-1).median())
    for config, options, fractions in CONFIGS:
        for frac in fractions:
            key = f"{name}/sound/{config}/r={frac}"
            results[key] = sound_case(surrogate, x, frac * median, options)
    # B far above the token norms: the chain's step may be B + a whatever L is (saturated_step)
    for frac in (1e-1, 1.0):
        bound = sound_block_bound(surrogate, [x], frac * median, None, 2, 1e3 * median, 0)
        results[f"{name}/saturates_from/r={frac}"] = vars(bound)
    # B = 10 median ||h||: the centre forward does not settle the step, every pass runs
    bound = sound_block_bound(surrogate, [x], 1e-1 * median, None, 2, 10 * median, 0)
    results[f"{name}/saturates_from_10x/r=0.1"] = vars(bound)
    emp = empirical_lipschitz(
        surrogate,
        x,
        1e-2 * median,
        random_trials=2,
        ascent_steps=6,
        seed=3,
        restarts=2,
        targeted_tokens=2,
    )
    results[f"{name}/empirical"] = emp.to_dict()
    results[f"{name}/fp_error"] = fp_error(surrogate, [x])
    cen = forward64(block_view(surrogate), x[0])
    results[f"{name}/forward64"] = {k: cen[k] for k in ("p", "o", "y", "ynorm", "out", "hidden")}


def tiny_cases(results: dict) -> None:
    ids = torch.randint(0, 256, (3, 19), generator=torch.Generator().manual_seed(0))
    for model, blocks in (("tiny_llama", range(4)), ("tiny_gpt2", range(2))):
        adapter = _adapter(model)
        for k in blocks:
            with torch.no_grad():
                x, _ = adapter.block_pair(ids, k)
            tiny_block(results, f"{model}/block{k}", extract_block(adapter, k), x)
    adapter = _adapter("tiny_llama")
    with torch.no_grad():
        x, _ = adapter.block_pair(ids, 1)
    full = extract_block(adapter, 1)
    reduced = reduce(full, Capacity(head_fraction=0.5, mlp_fraction=0.5), [x])
    tiny_block(results, "tiny_llama/block1/reduced", reduced, x)
    transcoder_cases(results, full, x)


def transcoder_cases(results: dict, full, x: torch.Tensor) -> None:
    torch.manual_seed(0)
    topk = Transcoder(width=96, k=8).build(full, [x])
    graph = copy.deepcopy(topk.graph)  # k = width: relu latents, no top-k swap possible
    graph.node("hidden").attrs["k"] = graph.capacity["k"] = 96
    relu = Surrogate(graph, topk.weights)
    median = float(x.norm(dim=-1).median())
    for name, surrogate in (("topk8", topk), ("relu", relu)):
        for frac in (1e-3, 1e-1, 1.0):
            key = f"transcoder/{name}/r={frac}"
            results[key] = sound_case(surrogate, x, frac * median, {})
            results[key]["block"] = vars(transcoder_block_bound(surrogate, [x], frac * median))
        emp = empirical_lipschitz(surrogate, x, 1e-2 * median, 2, 4, seed=5, restarts=1)
        results[f"transcoder/{name}/empirical"] = emp.to_dict()
        results[f"transcoder/{name}/fp_error"] = fp_error(surrogate, [x])


def smollm2_case(results: dict) -> None:
    from blockcert.capture.corpus import ShakespeareCorpus
    from blockcert.capture.prompts import build_prompts
    from blockcert.evaluate.trajectory import teacher_trajectory

    teacher = load_teacher("smollm2")
    adapter = _adapter(teacher=teacher)
    split = build_prompts(ShakespeareCorpus(), teacher.tokenizer, 128, 64, 1, seed=0)
    with torch.no_grad():
        x = teacher_trajectory(adapter, split.heldout, batch_size=8)[12]
    surrogate = extract_block(adapter, 12)
    radius = 1e-3 * float(x.norm(dim=-1).median())
    options = {"shells": 16, "joint_tokens": None}
    results["smollm2/block12/sound"] = sound_case(surrogate, x, radius, options)
    emp = empirical_lipschitz(
        surrogate,
        x,
        radius,
        random_trials=2,
        ascent_steps=8,
        seed=0,
        restarts=1,
        targeted_tokens=2,
    )
    results["smollm2/block12/empirical"] = emp.to_dict()
    results["smollm2/block12/fp_error"] = fp_error(surrogate, [x])


def _adapter(name: str | None = None, teacher=None):
    from blockcert.models.adapters import adapter_for

    return adapter_for(teacher if teacher is not None else load_teacher(name))


def differences(before, after, path: str = "") -> list[str]:
    """Paths at which two dumps differ (keys missing on either side included)."""
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for key in sorted(set(before) | set(after)):
            if key not in before or key not in after:
                out.append(f"{path}/{key}: only in {'after' if key in after else 'before'}")
            else:
                out.extend(differences(before[key], after[key], f"{path}/{key}"))
        return out
    return [] if before == after else [f"{path}: {before!r} != {after!r}"[:300]]


def count_values(tree) -> int:
    if isinstance(tree, dict):
        return sum(count_values(v) for v in tree.values())
    if isinstance(tree, list):
        return sum(count_values(v) for v in tree)
    return 1


def main() -> None:
    ap = argparse.ArgumentParser()
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", help="dump the constants to this JSON file")
    group.add_argument("--compare", help="compare the constants with this earlier dump")
    ap.add_argument("--no-smollm2", action="store_true", help="tiny models only")
    args = ap.parse_args()
    torch.set_num_threads(2)  # fixed: the reductions' order (hence the bits) may follow it
    start = time.time()
    results: dict = {}
    with torch.no_grad():
        tiny_cases(results)
    if not args.no_smollm2:
        smollm2_case(results)
    dump = {key: exact(value) for key, value in results.items()}
    elapsed = time.time() - start
    if args.write:
        Path(args.write).write_text(json.dumps(dump, indent=1, sort_keys=True) + "\n")
        summary = f"{count_values(dump)} values in {len(dump)} cases ({elapsed:.0f} s)"
        print(f"wrote {summary} to {args.write}")
        return
    before = json.loads(Path(args.compare).read_text())
    if args.no_smollm2:
        before = {k: v for k, v in before.items() if not k.startswith("smollm2/")}
    diff = differences(before, json.loads(json.dumps(dump)))
    summary = f"{count_values(dump)} values in {len(dump)} cases ({elapsed:.0f} s)"
    if diff:
        print(f"DIFFERENT at {len(diff)} entries of {summary}:", *diff[:20], sep="\n  ")
        sys.exit(1)
    print(f"IDENTICAL to the bit: {summary} against {args.compare}")


if __name__ == "__main__":
    main()
