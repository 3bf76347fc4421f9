"""Lipschitz bounds of a surrogate block, one module per operator around one folded block.

    folded.py          FoldedBlock: the block's weights in float64, gamma folded in, and norms
    norm.py            the norm factor lambda_t on the tube; gamma and beta folded forward
    forward64.py       the block in float64 at the tube centre
    softmax.py         the softmax weights anywhere on the tube
    attention*.py      Latt_t: centre terms, value / key / query paths, aligned and joint rows
    mlp*.py            Lmlp_t: centre Jacobian, tube terms (Khatri-Rao, bilinear form)
    saturation.py      the saturation constant a
    shells.py          tube shells and the per-token rows on them
    refine.py          branch and bound over the MLP rows
    block.py           sound constants of a pre-norm block (the per-prompt passes)
    transcoder.py      sound constants of a TopK transcoder block
    empirical.py       the empirical (lower) estimate by projected gradient ascent
    labelled.py        Lipschitz: every constant with its label, sound or empirical
    options.py         LipschitzOptions: how they are computed (conf/lipschitz/default.yaml)

Derivations: docs/soundness.md (one section per operator, linked from each module).
"""

from blockcert.cert.lipschitz.block import SoundBlockBound, sound_block_bound
from blockcert.cert.lipschitz.empirical import FLOAT64_BELOW, empirical_ascent, search_dtype
from blockcert.cert.lipschitz.folded import FoldedBlock, FoldedRange, fold_block, fold_range
from blockcert.cert.lipschitz.forward64 import forward64
from blockcert.cert.lipschitz.labelled import (
    NOT_COMPUTED,
    SATURATED,
    SINGULAR_NORM,
    Lipschitz,
    empirical_lipschitz,
    not_computed,
    sound_lipschitz,
)
from blockcert.cert.lipschitz.options import LipschitzOptions
from blockcert.cert.lipschitz.transcoder import REASON_SWAP, TranscoderBound, transcoder_block_bound

__all__ = [
    "FLOAT64_BELOW",
    "NOT_COMPUTED",
    "REASON_SWAP",
    "SATURATED",
    "SINGULAR_NORM",
    "FoldedBlock",
    "FoldedRange",
    "Lipschitz",
    "LipschitzOptions",
    "SoundBlockBound",
    "TranscoderBound",
    "empirical_ascent",
    "empirical_lipschitz",
    "fold_block",
    "fold_range",
    "forward64",
    "not_computed",
    "search_dtype",
    "sound_block_bound",
    "sound_lipschitz",
    "transcoder_block_bound",
]
