"""Verification of untrusted certificates: collect them, check hashes, re-derive claims."""
