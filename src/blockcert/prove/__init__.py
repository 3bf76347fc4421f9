"""Lean hand-off: per-run instances and the lake runner."""
