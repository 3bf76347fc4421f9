"""The compression budget: what fraction of each block's heads, MLP neurons, rank or parameters.

mlp_fraction and param_fraction (exactly one is set) fix the total MLP neurons kept; the
allocation then spreads that total over the blocks. param_fraction p is turned into a width
per block: with P the teacher block's parameters, c the parameters one neuron carries (its
gate and up rows and down column for a Llama MLP, its fc row, fc bias and down column for
GPT-2) and the heads cut first,

    width = round((p * P - (params of the block without MLP neurons)) / c),

so the blocks together keep at most p of their parameters (the compensating bias adds d).
head_fraction cuts query heads in every block (key/value heads follow the kept query heads);
rank_fraction factors every projection to rank round(rank_fraction * d_model) after the cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from blockcert.compress.allocation import Widths
from blockcert.errors import BlockCertError
from blockcert.surrogate.ir import Surrogate
from blockcert.surrogate.view import block_view


@dataclass(frozen=True)
class Budget:
    mlp_fraction: float | None = 0.75
    param_fraction: float | None = None
    head_fraction: float = 1.0
    rank_fraction: float | None = None

    def __post_init__(self):
        if (self.mlp_fraction is None) == (self.param_fraction is None):
            raise BlockCertError(
                "compress.budget: set exactly one of mlp_fraction and param_fraction "
                "(the other null)."
            )
        for name in ("mlp_fraction", "param_fraction", "head_fraction", "rank_fraction"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value <= 1.0:
                raise BlockCertError(f"compress.budget.{name}={value} must lie in (0, 1].")
        if self.param_fraction is not None and self.rank_fraction is not None:
            raise BlockCertError(
                "compress.budget.param_fraction sets the MLP width with full-rank projections; "
                "leave rank_fraction null with it."
            )

    def heads(self, n_heads: int) -> int:
        return max(1, round(self.head_fraction * n_heads))

    def rank(self, d_model: int) -> int | None:
        return None if self.rank_fraction is None else max(1, round(self.rank_fraction * d_model))

    def width(self, full: Surrogate, bias_params: int = 0) -> int:
        """MLP neurons kept in one block whose teacher surrogate is `full` (heads kept whole)."""
        view = block_view(full)
        width = view.mlp.width
        if self.mlp_fraction is not None:
            return max(1, round(self.mlp_fraction * width))
        per_neuron = sum(p.in_features for p in view.mlp.inputs) + view.mlp.down.out_features
        per_neuron += sum(1 for p in view.mlp.inputs if p.bias is not None)
        attention = view.attention
        per_head = 2 * attention.head_dim * view.d_model  # query rows and output columns
        removed_heads = attention.n_heads - self.heads(attention.n_heads)
        rest = full.num_params - width * per_neuron - removed_heads * per_head + bias_params
        kept = round((self.param_fraction * full.num_params - rest) / per_neuron)
        if kept < 1:
            raise BlockCertError(
                f"compress.budget.param_fraction={self.param_fraction} leaves no MLP neuron "
                f"(the rest of the block is {rest / full.num_params:.1%} of it); raise it or "
                "cut heads (head_fraction)."
            )
        return min(kept, width)

    def flat(self, fulls: Sequence[Surrogate], blocks: Sequence[int], bias_params: int) -> Widths:
        """The flat cut: the same heads and width in every block."""
        heads = [self.heads(block_view(f).attention.n_heads) for f in fulls]
        widths = [self.width(f, bias_params) for f in fulls]
        return Widths(dict(zip(blocks, heads, strict=True)), dict(zip(blocks, widths, strict=True)))
