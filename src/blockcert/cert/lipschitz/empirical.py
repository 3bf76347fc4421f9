"""Empirical (lower) Lipschitz estimates: projected gradient ascent with restarts.

ratio(D) = d(g(X + D), g(X)) / d(D), d(D) = max_t ||D_t|| <= r. Every evaluated ratio is a
lower bound on the true Lipschitz constant on the tube, so the estimate is the largest one seen,
labelled `empirical` (never sound). Search: `random_trials` random directions, then `restarts`
runs of `ascent_steps` projected steps (per-token normalised gradient, step 0.3 r for the first
70 % of the steps, then r/20 to settle; every token projected into its ball of radius r), on several
prompts at once (each prompt has its own ratio, so their gradients do not interact). Optionally a
targeted phase: the max over tokens lets the ascent follow one token at a time, so the
`targeted_tokens` tokens of each prompt that moved most under the best perturbation found are
each ascended on alone (their own output distance, from a random start), which finds ratios the
max's gradient misses (SmolLM2 at r = 1e-3 median ||h||: block 14 17.5 -> 21.2, block 7 25.2
-> 26.5). See docs/soundness.md#empirical-estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from blockcert.surrogate.interpret import run_graph


@dataclass
class AscentResult:
    value: float
    per_prompt: list[float]
    method: str


def seq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """max over positions of the per-token L2 distance, per sequence: [b, s, d] -> [b]."""
    return (a - b).norm(dim=-1).amax(-1)


def project(delta: torch.Tensor, radius: float) -> torch.Tensor:
    """Scale each token of delta into the ball of `radius` (d(delta) <= radius)."""
    norms = delta.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    return delta * torch.clamp(radius / norms, max=1.0)


def _ratio(graph, weights, x, delta, base) -> torch.Tensor:
    return seq_dist(run_graph(graph, weights, x + delta), base) / seq_dist(
        delta, torch.zeros_like(delta)
    ).clamp_min(1e-30)


TARGET_STARTS = 2  # random starts per targeted token (its local optima differ by ~10 %)


def _step(delta: torch.Tensor, grad: torch.Tensor, radius: float, step: int, steps: int):
    """One projected step along the per-token normalised gradient (0.3 r, then r/20)."""
    size = radius * (0.3 if step < 0.7 * steps else 0.05)
    with torch.no_grad():
        direction = grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        return project(delta + size * direction, radius)


def targeted_ascent(
    graph, weights, x, radius, start, base, tokens: int, steps: int, generator
) -> torch.Tensor:
    """[b] best ratio of the targeted phase: per prompt, the `tokens` tokens that moved most
    under `start` are ascended on alone (a copy of the prompt each, from TARGET_STARTS random
    starts: from `start` the ascent stays near the max's local optimum); the ratio kept is the whole
    sequence's (max over tokens), a lower estimate like every other."""
    b = x.shape[0]
    with torch.no_grad():
        moved = (run_graph(graph, weights, x + start) - base).norm(dim=-1)  # [b, s]
    target = moved.topk(min(tokens, x.shape[1]), dim=-1).indices  # [b, k]
    target = target.repeat_interleave(TARGET_STARTS, dim=-1).reshape(-1)  # [b k n]
    copies = target.numel() // b
    xs, bases = x.repeat_interleave(copies, 0), base.repeat_interleave(copies, 0)
    delta = project(torch.randn(xs.shape, generator=generator) * radius * 10, radius)
    rows = torch.arange(len(target))
    best = torch.zeros(len(target), dtype=torch.float64)
    for step in range(steps + 1):
        delta = delta.detach().requires_grad_(True)
        out = run_graph(graph, weights, xs + delta)
        ratio = seq_dist(out, bases) / seq_dist(delta, torch.zeros_like(delta)).clamp_min(1e-30)
        best = torch.maximum(best, ratio.detach().double())
        if step == steps:
            break
        own = (out[rows, target] - bases[rows, target]).norm(dim=-1)
        (grad,) = torch.autograd.grad(own.sum(), delta)
        delta = _step(delta, grad, radius, step, steps)
    return best.view(b, copies).amax(-1)


def ascent(
    graph,
    weights,
    x: torch.Tensor,
    radius: float,
    random_trials: int,
    restarts: int,
    ascent_steps: int,
    seed: int,
    targeted_tokens: int = 0,
) -> AscentResult:
    """The search of the module docstring on prompts x [b, s, d] (autograd on): the largest
    ratio per prompt over random trials, restarts of projected ascent and, with
    targeted_tokens > 0, the targeted phase; every ratio is a lower estimate."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        base = run_graph(graph, weights, x)
        best = torch.zeros(x.shape[0], dtype=torch.float64)
        best_delta = torch.zeros_like(x)  # the perturbation of each prompt's best ratio
        for _ in range(random_trials):
            delta = project(torch.randn(x.shape, generator=generator) * radius * 10, radius)
            ratio = _ratio(graph, weights, x, delta, base).double()
            best_delta = torch.where((ratio > best)[:, None, None], delta, best_delta)
            best = torch.maximum(best, ratio)
    for _ in range(restarts):
        delta = project(torch.randn(x.shape, generator=generator) * radius * 10, radius)
        for step in range(ascent_steps + 1):
            delta = delta.detach().requires_grad_(True)
            ratio = _ratio(graph, weights, x, delta, base)
            better = ratio.detach().double() > best
            best_delta = torch.where(better[:, None, None], delta.detach(), best_delta)
            best = torch.maximum(best, ratio.detach().double())
            if step == ascent_steps:
                break
            (grad,) = torch.autograd.grad(ratio.sum(), delta)
            delta = _step(delta, grad, radius, step, ascent_steps)
    method = (
        f"max ratio over {random_trials} random + {restarts} restarts x {ascent_steps} projected "
        f"gradient-ascent steps"
    )
    if targeted_tokens > 0:
        targeted = targeted_ascent(
            graph, weights, x, radius, best_delta, base, targeted_tokens, ascent_steps, generator
        )
        best = torch.maximum(best, targeted)
        method += f" + {targeted_tokens} targeted token(s) per prompt x {ascent_steps} steps"
    method += f" on {x.shape[0]} prompt(s)"
    return AscentResult(float(best.max()), [float(b) for b in best], method)


# Below this radius (relative to the largest input token norm) fp32 rounding of the block
# (~1e-6 relative) would be a visible share of the measured ratio: search in float64 there.
FLOAT64_BELOW = 1e-3


def search_dtype(inputs: torch.Tensor, radius: float) -> torch.dtype:
    """float64 for radii near fp32 resolution, float32 (twice as fast) above them."""
    scale = float(inputs.detach().norm(dim=-1).amax())
    return torch.float64 if radius < FLOAT64_BELOW * scale else torch.float32


def empirical_ascent(
    graph,
    weights,
    inputs: torch.Tensor,
    radius: float,
    random_trials: int,
    restarts: int,
    ascent_steps: int,
    seed: int,
    dtype: torch.dtype | None = None,
    targeted_tokens: int = 0,
) -> AscentResult:
    """`ascent` under autograd, even when the caller runs in inference mode, in `dtype`
    (default `search_dtype`: float64 at tiny radii, float32 above).

    float64: the estimate is of the IR in exact arithmetic, like the sound bound; in fp32 a
    perturbation below the activations' rounding (radius ~1e-6 of norms ~1e2) measures
    rounding noise, not the block (SmolLM2 block 11 at r = 1e-6: 7135 in fp32, 410 in float64).
    At r >= 1e-3 of the token norms that noise is below 1e-3 of the ratio.
    """
    dtype = dtype or search_dtype(inputs, radius)
    with torch.inference_mode(False), torch.enable_grad():
        weights = {k: v.to(dtype).clone() for k, v in weights.items()}
        result = ascent(
            graph,
            weights,
            inputs.to(dtype).clone(),
            radius,
            random_trials,
            restarts,
            ascent_steps,
            seed,
            targeted_tokens,
        )
    result.method += f", in {str(dtype).removeprefix('torch.')}"
    return result
