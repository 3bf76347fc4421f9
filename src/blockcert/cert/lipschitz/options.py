"""How Lipschitz constants are computed: one options object from one config group.

`conf/lipschitz/default.yaml` is that group, read by train.py's certificates (where the constants
are informational, so the prompt counts default to 0: not computed) and by certify.py's chain
alike; `LipschitzOptions.from_config` checks every count once, with one line per bad value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from blockcert.errors import BlockCertError

# (key, null allowed, least value, what null / 0 mean): the counts and how they are read
COUNTS = (
    ("sound_prompts", True, 0, "0: not computed; null: every prompt"),
    ("empirical_prompts", False, 0, "0: not computed"),
    ("tube_shells", False, 1, ""),
    ("refine_tokens", True, 1, "null: every token that can decide the max"),
    ("joint_tokens", True, 0, "0: none; null: every row"),
    ("random_trials", False, 0, ""),
    ("ascent_steps", False, 0, ""),
    ("restarts", False, 0, ""),
    ("targeted_tokens", False, 0, "0: none"),
)


def check_count(key: str, value, nullable: bool, least: int = 1, hint: str = "") -> int | None:
    """`value` of config key `key` as a whole number >= least (None passes where nullable);
    otherwise one line naming the key, with `hint` (what null or 0 mean) in brackets."""
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        hint = f" ({hint})" if hint else ""
        raise BlockCertError(f"{key}={value!r}: give a whole number >= {least}{hint}.")
    return value


@dataclass(frozen=True)
class LipschitzOptions:
    """sound_prompts: the sound L over the first N evaluated prompts (None: all; 0: not
    computed); empirical_prompts: the empirical (lower) estimate over the first N (0: not
    computed); tube_shells, refine_tokens, joint_tokens: how tight the sound bound is
    (docs/soundness.md); random_trials, ascent_steps, restarts, targeted_tokens: the empirical
    search; min_radius_fraction: empirical probes use r >= this * median ||h||."""

    sound_prompts: int | None = 4
    empirical_prompts: int = 0
    tube_shells: int = 1
    refine_tokens: int | None = 24
    joint_tokens: int | None = 0
    random_trials: int = 4
    ascent_steps: int = 10
    restarts: int = 4
    targeted_tokens: int = 0
    min_radius_fraction: float = 1e-4

    @classmethod
    def from_config(cls, config: Mapping, where: str = "lipschitz") -> LipschitzOptions:
        """Every key of the group, each count checked (one line naming `where.key` if not)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise BlockCertError(f"{where}.{unknown[0]} is not a Lipschitz option.")
        for key, nullable, least, hint in COUNTS:
            if key in config:
                check_count(f"{where}.{key}", config[key], nullable, least, hint)
        fraction = config.get("min_radius_fraction", cls.min_radius_fraction)
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or fraction < 0:
            raise BlockCertError(f"{where}.min_radius_fraction={fraction!r}: give a number >= 0.")
        return cls(**{key: config[key] for key in known if key in config})

    def search(self) -> dict:
        """The empirical search's keyword arguments."""
        return {
            "random_trials": self.random_trials,
            "ascent_steps": self.ascent_steps,
            "restarts": self.restarts,
            "targeted_tokens": self.targeted_tokens,
        }
