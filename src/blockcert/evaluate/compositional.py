"""The compositional statement about fresh prompts (evaluate/statistics.py), opt-in.

Per block two events (eps_k within tau_k, L_k within L^_k on the prompt's own tube) calibrated
on part of the held-out prompts, misses counted on the rest, a union bound over every event:
modular (re-certifying block k changes only its events), but a union over 2K events needs many
prompts and per-prompt Lipschitz constants cost ~0.4 s per prompt and block on SmolLM2. It is
therefore off by default (`statistics.compositional.enabled`), and where it is computed but
says nothing (an infinite B_L, or miss bounds summing to 1 or more) the report gives one line
saying why, never numbers that mean nothing. The check prompts are the verifier's own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from blockcert.cert.lipschitz import LipschitzOptions
from blockcert.evaluate.prompt_stage import certificate_tau
from blockcert.evaluate.statistics import PromptConstants, compositional_bound, event_misses
from blockcert.evaluate.trajectory import (
    RaggedTrajectory,
    evaluate_prompts,
    ragged_teacher_trajectory,
)
from blockcert.models.adapters import BlockAdapter
from blockcert.surrogate.ir import Surrogate


def why_vacuous(final_bound: float, total_miss: float) -> str | None:
    """One line saying why the statement says nothing, or None where it is informative."""
    if not math.isfinite(final_bound):
        return "no finite chain: some block's Lipschitz estimate is infinite on its tube"
    if total_miss >= 1.0:
        return (
            f"the union bound over every block's events reaches {total_miss:.3g} >= 1: too "
            "few held-out prompts for this many events (each needs its own miss bound)"
        )
    return None


def compositional_section(
    adapter: BlockAdapter,
    heldout: torch.Tensor,
    states: list[torch.Tensor],
    surrogates: Mapping[int, Surrogate],
    certificates: Mapping[int, dict],
    chain: Sequence[tuple[int, Surrogate]],
    slack: Mapping[int, float],
    options: Mapping,
    lipschitz: LipschitzOptions,
    batch_size: int,
    check: Sequence[torch.Tensor],
) -> dict:
    """The statement on the held-out prompts (options: statistics.compositional), checked on
    the verifier's `check` prompts."""
    trajectory = RaggedTrajectory.from_states(states, batch_size)
    taus = {k: certificate_tau(c) or 0.0 for k, c in certificates.items()}
    evaluation = evaluate_prompts(adapter, surrogates, list(heldout), trajectory, taus)
    first = chain[0][0]
    min_radius = lipschitz.min_radius_fraction * float(states[first].norm(dim=-1).median())
    kinds = ["sound", "empirical"] if options["lipschitz"] == "sound" else ["empirical"]
    for kind in kinds:  # the sound chain may be unbounded on these tubes: fall back, labelled
        lip = PromptConstants(kind, lipschitz, min_radius)
        bound = compositional_bound(
            chain,
            trajectory,
            evaluation,
            options["delta"],
            options["calibration_fraction"],
            taus if options["tau"] == "certificate" else None,
            slack,
            lip,
        )
        if math.isfinite(bound.final_bound):
            break
    why = why_vacuous(bound.final_bound, bound.total_miss_upper)
    if why is not None:
        return {"informative": False, "why": why}
    section = {"informative": True, **bound.to_dict(), "check": None}
    if check:
        traj = ragged_teacher_trajectory(adapter, list(check), batch_size)
        check_eval = evaluate_prompts(adapter, surrogates, list(check), traj, taus)
        misses = event_misses(chain, traj, check_eval, range(len(check)), bound, lip)
        section["check"] = bound.check(misses, check_eval.final_deviation)
    return section
