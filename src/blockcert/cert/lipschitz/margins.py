"""Margins for the float64 rounding of the bounds' own arithmetic.

Every bound is computed in float64 and then inflated by a relative margin well above the
rounding of the few dozen operations behind it, so that it bounds the exact-arithmetic value
(docs/soundness.md#floating-point).
"""

REL_MARGIN = 1e-9  # float64 rounding of the bound's own arithmetic (relative)
