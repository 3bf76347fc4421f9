"""Lean hand-off: per-run instances, the bundled Lean kernel, and the lake runner."""
