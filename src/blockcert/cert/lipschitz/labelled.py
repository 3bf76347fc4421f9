"""Labelled Lipschitz constants of a surrogate block on the tube around the teacher inputs.

Distance on sequences: d(X, Y) = max_t ||X_t - Y_t||_2. The tube of radius r holds every X'
with d(X', X) <= r for an evaluated teacher input X. Every constant carries its label:
- `sound_lipschitz`: an upper bound by construction, in exact arithmetic of the IR
  (blockcert.cert.lipschitz.block; transcoder blocks: blockcert.cert.lipschitz.transcoder),
  with the block's saturation constant a (d(g(y), g(x)) <= d(y, x) + a for every y in the
  tube) in `parts["saturation"]`;
- `empirical_lipschitz`: the largest ratio d(g(X+D), g(X)) / d(D) found by random and
  projected-gradient-ascent perturbations with d(D) <= r: a LOWER estimate, labelled `empirical`
  (blockcert.cert.lipschitz.empirical).
fp32 evaluation error is not part of either: blockcert.cert.fp_allowance measures it.
See docs/soundness.md#distance-and-composition.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch

from blockcert.cert.lipschitz.block import SoundBlockBound, sound_block_bound
from blockcert.cert.lipschitz.empirical import empirical_ascent
from blockcert.cert.lipschitz.transcoder import REASON_SWAP, TranscoderBound, transcoder_block_bound
from blockcert.surrogate.ir import Surrogate
from blockcert.surrogate.view import block_view

SOUND_METHOD = (
    "sound in exact arithmetic: per-token row sums of the Jacobian over the tube (gamma folded, "
    "lambda_t = 1/sqrt((|x_t|-r)^2/d+eps), attention value/query/key paths with actual p, q, k, v "
    "inflated to the tube, per-token MLP Jacobian with intervals), Cholesky-certified spectral or "
    "Frobenius norms"
)

TRANSCODER_METHOD = (
    "sound in exact arithmetic: attention as above; TopK transcoder MLP per token with "
    "pre-activation intervals over the tube: lambda2 ||W_dec,P|| ||A_enc,P|| over the always-"
    "selected latents P that can be positive, no finite value where a top-k swap at a positive "
    "activation (a discontinuity) may lie in the tube"
)
SINGULAR_NORM = "a norm with eps = 0 reaches ||x|| <= r on this tube"
SATURATED = "not computed: the chain's step is B + a here for any L this bound could give"
NOT_COMPUTED = "not computed: 0 prompts asked for (certify.py computes it on its composed tubes)"


@dataclass
class Lipschitz:
    """value is None when no finite bound exists on this tube (a norm with eps = 0 reaching 0)."""

    value: float | None
    kind: str  # "sound" | "empirical"
    radius: float
    method: str
    parts: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def sound_lipschitz(
    surrogate: Surrogate,
    inputs: Iterable[torch.Tensor],
    radius: float,
    shells: int = 1,
    refine_tokens: int | None = None,
    saturates_from: float | None = None,
    joint_tokens: int | None = 0,
) -> Lipschitz:
    """Sound upper bound on Lip(g) over the tube of `radius` around `inputs` ([b, s, d] each).

    parts: saturation (a, finite at any radius), attention / mlp (max per-token sub-layer
    constants), min_input_norm, tokens, prompts, refined (tokens whose MLP bound used the
    spectral norm; refine_tokens caps them per prompt, None: every token that can decide the
    max), shells (how many shells the tube was cut into: blockcert.cert.lipschitz.shells;
    transcoder blocks always use the whole tube, shells = 1), saturated_step (saturates_from =
    the chain's B_(k-1) showed min(L B, B + a) = B + a for any L the bound could give, so L was
    not computed: value None, reason SATURATED; blockcert.cert.lipschitz.block.sound_block_bound),
    joint (rows per prompt with the joint attention bound, joint_tokens; None: all).
    """
    if block_view(surrogate).mlp.kind == "transcoder":
        return _transcoder_lipschitz(surrogate, inputs, radius)
    bound = sound_block_bound(
        surrogate, inputs, radius, refine_tokens, shells, saturates_from, joint_tokens
    )
    value = bound.lipschitz if math.isfinite(bound.lipschitz) else None
    parts = {**_shared_parts(bound), "refined": bound.refined, "shells": bound.shells}
    parts["joint"] = "all" if joint_tokens is None else joint_tokens
    parts["saturated_step"] = bound.saturated_step
    if value is None:
        parts["reason"] = SATURATED if bound.saturated_step else SINGULAR_NORM
    return Lipschitz(value, "sound", radius, SOUND_METHOD, parts)


def not_computed(kind: str, radius: float) -> Lipschitz:
    """A constant a run chose not to compute (0 prompts): value None, the reason in its parts."""
    return Lipschitz(None, kind, radius, "not computed", {"prompts": 0, "reason": NOT_COMPUTED})


def _shared_parts(bound: SoundBlockBound | TranscoderBound) -> dict:
    """The parts every sound block bound reports (pre-norm and transcoder blocks alike)."""
    return {
        "saturation": bound.saturation,
        "attention": bound.attention,
        "mlp": bound.mlp,
        "min_input_norm": bound.min_input_norm,
        "tokens": bound.tokens,
        "prompts": bound.prompts,
    }


def _transcoder_lipschitz(
    surrogate: Surrogate, inputs: Iterable[torch.Tensor], radius: float
) -> Lipschitz:
    """TopK transcoder blocks (blockcert.cert.lipschitz.transcoder): parts as above, plus
    swap_tokens (tokens whose tube may hold a discontinuous top-k swap: value None if any)."""
    bound = transcoder_block_bound(surrogate, inputs, radius)
    value = bound.lipschitz if math.isfinite(bound.lipschitz) else None
    parts = {**_shared_parts(bound), "swap_tokens": bound.swap_tokens, "shells": 1}
    if value is None:
        parts["reason"] = REASON_SWAP if bound.swap_tokens else SINGULAR_NORM
    return Lipschitz(value, "sound", radius, TRANSCODER_METHOD, parts)


def empirical_lipschitz(
    surrogate: Surrogate,
    inputs: torch.Tensor,
    radius: float,
    random_trials: int = 8,
    ascent_steps: int = 60,
    seed: int = 0,
    restarts: int = 8,
    targeted_tokens: int = 0,
) -> Lipschitz:
    """Largest observed d(g(X+D), g(X)) / d(D) with d(D) <= r over prompts `inputs` [b, s, d]:
    a LOWER estimate of the Lipschitz constant, labelled `empirical`; targeted_tokens: that many
    tokens per prompt also ascended on alone (blockcert.cert.lipschitz.empirical)."""
    result = empirical_ascent(
        surrogate.graph,
        surrogate.weights,
        inputs,
        radius,
        random_trials,
        restarts,
        ascent_steps,
        seed,
        targeted_tokens=targeted_tokens,
    )
    parts = {"prompts": inputs.shape[0], "per_prompt": result.per_prompt}
    return Lipschitz(result.value, "empirical", radius, result.method, parts)
