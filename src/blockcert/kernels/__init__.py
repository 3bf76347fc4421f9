"""Triton kernels of blockcert, each beside its plain-torch reference."""

from blockcert.kernels.cert_reduce import (
    ErrorStats,
    fused_projection_error,
    fused_projection_error_reference,
    pair_error,
    pair_error_reference,
    use_triton,
)

__all__ = [
    "ErrorStats",
    "fused_projection_error",
    "fused_projection_error_reference",
    "pair_error",
    "pair_error_reference",
    "use_triton",
]
