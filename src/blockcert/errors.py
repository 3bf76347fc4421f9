"""Project exception: one clear sentence saying what was wrong and what to do."""


class BlockCertError(Exception):
    """Raised for bad input or failed checks; entry scripts print it on one line and exit."""

    exit_code = 2


class VerificationError(BlockCertError):
    """A certificate or artifact does not match what was recomputed from it."""

    exit_code = 3


class BoundViolationError(BlockCertError):
    """Observed deviation exceeds a bound built only from sound constants: a bug."""

    exit_code = 4
