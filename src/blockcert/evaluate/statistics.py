"""Statistical statements about FRESH prompts, with the prompt as the i.i.d. unit.

Tokens of one prompt are correlated, so every count below counts prompts. These statements hold
for prompts drawn i.i.d. from the distribution the evaluated prompts were drawn from (for corpus
windows: a window drawn from the same shuffled pool); they say nothing about other text, e.g.
the stress set. Worst-case figures on the evaluated prompts themselves are the composition
bound's business (compose/), not this module's.

The direct statement on every metric at once is evaluate/statement.py's (an order statistic
with one-sided Clopper-Pearson); this module holds (b), the compositional statement (opt-in,
evaluate/compositional.py):

(b) compositional (`compositional_bound`): for each block k of the chain two events per prompt,
    E_k^eps(p):  eps_k(p) <= tau_k   (teacher inputs),
    E_k^L(p):    L_k(p; r_k) <= L^_k (Lipschitz of g_k on the tube of radius r_k around p's
                                      own teacher input h_{k-1}(p)),   r_k = B_{k-1}.
If every event holds for p, then by induction e_k(p) <= L_k(p) e_{k-1}(p) + eps_k(p)
<= L^_k B_{k-1} + tau_k = B_k (the composition theorem on one prompt), so e_L(p) <= B_L(tau, L^).
tau_k (when calibrated), L^_k and hence the radii are fixed on a calibration part of the prompts;
misses are counted on the other n_e prompts, independent of the thresholds, so each count is
Binomial(n_e, p_e) and its CP bound at delta / n_events is exact. Bonferroni + union bound:
    with confidence 1 - delta,  P(e_L(fresh) > B_L) <= P(some event misses) <= sum_e m_e.
The bound is modular (re-certifying block k changes only its own events). The joint event
"all hold" gets its own CP bound at delta as well (tighter, not modular).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch

from blockcert.cert.coverage import clopper_pearson_upper
from blockcert.cert.lipschitz import LipschitzOptions, empirical_lipschitz, sound_lipschitz
from blockcert.compose.bound import bound_trajectory
from blockcert.compose.rational import round_up
from blockcert.errors import BlockCertError
from blockcert.evaluate.trajectory import PromptEvaluation, RaggedTrajectory
from blockcert.surrogate.ir import Surrogate


@dataclass(frozen=True)
class PromptConstants:
    """Per-prompt Lipschitz constants of the compositional statement: `sound` (upper bound) or
    `empirical` (lower estimate), computed as `options` (the lipschitz group) says; empirical
    probes use r >= min_radius."""

    kind: str = "sound"
    options: LipschitzOptions = field(default_factory=LipschitzOptions)
    min_radius: float = 0.0


def prompt_lipschitz(
    surrogate: Surrogate, x: torch.Tensor, radius: float, constants: PromptConstants, seed: int = 0
) -> float:
    """Lipschitz constant of g on the tube of `radius` around ONE prompt `x [1, s, d]`; inf if
    the sound bound does not exist there."""
    options = constants.options
    if constants.kind == "sound":
        value = sound_lipschitz(surrogate, [x], radius, options.tube_shells).value
    elif constants.kind == "empirical":
        r = max(radius, constants.min_radius)
        value = empirical_lipschitz(
            surrogate, x, r, options.random_trials, options.ascent_steps, seed=seed
        ).value
    else:
        raise BlockCertError(f"statistics.lipschitz={constants.kind!r}: use sound or empirical.")
    return math.inf if value is None else float(value)


@dataclass(frozen=True)
class EventBound:
    """Prompt-level miss rate of one event (`eps` or `lipschitz`) of one block."""

    block: int
    event: str
    threshold: float
    n: int
    misses: int
    delta: float
    miss_upper: float


@dataclass
class CompositionalBound:
    """(b): B_k(tau, L^) and the per-event miss bounds; bounds[0] = B_0 = 0."""

    blocks: list[int]
    surrogate_blocks: list[int]  # blocks with an eps event (teacher blocks have eps = 0)
    taus: list[float]  # tau_k: the eps event's threshold
    slack: list[float]  # fp32 allowance: the recursion composes tau_k + slack_k
    lipschitz: list[float]  # L^_k
    radii: list[float]  # r_k = B_{k-1}
    bounds: list[float]
    kind: str
    delta: float
    n_calibration: int
    events: list[EventBound] = field(default_factory=list)
    joint_misses: int = 0
    joint_upper: float = 1.0

    @property
    def final_bound(self) -> float:
        return self.bounds[-1]

    @property
    def total_miss_upper(self) -> float:
        """Union bound: sum of the per-event miss bounds (capped at 1)."""
        return min(1.0, sum(e.miss_upper for e in self.events))

    def statement(self) -> str:
        return (
            f"with confidence {1 - self.delta:.4g}, a fresh prompt's stitched deviation is <= "
            f"{self.final_bound:.4g} ({self.kind} L) with probability >= "
            f"{1 - self.total_miss_upper:.4g} (union over {len(self.events)} events; joint "
            f"event: >= {1 - self.joint_upper:.4g})"
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["final_bound"] = self.final_bound
        data["total_miss_upper"] = self.total_miss_upper
        data["statement"] = self.statement()
        return data

    def check(self, misses: torch.Tensor, final_deviation: torch.Tensor) -> dict:
        """Observed rates on other prompts (the check split): per event, any event, and the
        stitched deviation beyond B_L, each against the stated miss bounds."""
        n = len(final_deviation)
        per_event = misses.double().mean(0).tolist() if n else [0.0] * misses.shape[1]
        any_miss = float(misses.any(1).double().mean()) if n else 0.0
        beyond = float((final_deviation > self.final_bound).double().mean()) if n else 0.0
        return {
            "n": n,
            "event_fraction": per_event,
            "event_within": [
                f <= e.miss_upper for f, e in zip(per_event, self.events, strict=True)
            ],
            "any_event_fraction": any_miss,
            "beyond_bound_fraction": beyond,
            "miss_upper": self.total_miss_upper,
            "joint_upper": self.joint_upper,
            "within": beyond <= self.total_miss_upper and any_miss <= self.total_miss_upper,
        }


def _compose(bound: CompositionalBound, extra: Sequence | None) -> list[float]:
    """B_0..B_K through the one bound recursion (compose.bound), exact rationals rounded up."""
    if any(math.isinf(v) for v in bound.lipschitz):
        return [0.0] + [math.inf] * len(bound.taus)
    taus = [round_up(t + s) for t, s in zip(bound.taus, bound.slack, strict=True)]
    args = [taus, [round_up(v) for v in bound.lipschitz]]
    if extra is not None:
        args.append([None if a is None else round_up(a) for a in extra[: len(taus)]])
    return [float(b) for b in bound_trajectory(*args)]


def _block_eps(evaluation: PromptEvaluation, k: int, rows: Sequence[int]) -> torch.Tensor:
    """eps_k(p) on teacher inputs; 0 for teacher blocks (g_k = f_k)."""
    index = torch.as_tensor(list(rows), dtype=torch.long)
    if k in evaluation.eps:
        return evaluation.eps[k][index]
    return torch.zeros(len(index), dtype=torch.float64)


def _block_lipschitz(
    surrogate: Surrogate,
    trajectory: RaggedTrajectory,
    k: int,
    rows: Sequence[int],
    radius: float,
    options: PromptConstants,
) -> torch.Tensor:
    """L_k(p; radius) of every prompt in `rows`, each on its own tube."""
    values = [
        prompt_lipschitz(surrogate, trajectory.prompt_states(p, k), radius, options, seed=k)
        for p in rows
    ]
    return torch.tensor(values, dtype=torch.float64)


def event_misses(
    chain: Sequence[tuple[int, Surrogate]],
    trajectory: RaggedTrajectory,
    evaluation: PromptEvaluation,
    rows: Sequence[int],
    bound: CompositionalBound,
    options: PromptConstants,
) -> torch.Tensor:
    """Misses `[len(rows), n_events]` at the bound's thresholds and radii, events in the order
    of `bound.events` (per block: eps if it has a surrogate, then lipschitz)."""
    columns = []
    for j, (k, surrogate) in enumerate(chain):
        if k in bound.surrogate_blocks:
            columns.append(_block_eps(evaluation, k, rows) > bound.taus[j])
        lips = _block_lipschitz(surrogate, trajectory, k, rows, bound.radii[j], options)
        columns.append(lips > bound.lipschitz[j])
    return torch.stack(columns, dim=1)


def compositional_bound(
    chain: Sequence[tuple[int, Surrogate]],
    trajectory: RaggedTrajectory,
    evaluation: PromptEvaluation,
    delta: float,
    calibration_fraction: float = 0.5,
    taus: Mapping[int, float] | None = None,
    slack: Mapping[int, float] | None = None,
    options: PromptConstants | None = None,
    extra: Sequence | None = None,
) -> CompositionalBound:
    """(b) B_L(tau, L^) with its per-event miss bounds (see the module docstring).

    chain: (k, g_k) for every block from the first certified one to the last (the teacher
    block's IR where there is no surrogate); prompts 0..n_c-1 calibrate, the rest count misses.
    taus: fixed tau_k per block (None: calibrated, the max of eps_k over the calibration
    prompts). slack: fp32 allowance added to every composed tau_k. extra: optional a_k of the
    generalised recursion, passed on to compose.bound.bound_trajectory.
    """
    options = options or PromptConstants()
    n = len(evaluation.n_tokens)
    n_cal = int(round(calibration_fraction * n))
    if not 1 <= n_cal < n:
        raise BlockCertError(
            f"{n} prompts cannot be split into calibration ({calibration_fraction:g}) and "
            "evaluation parts: evaluate more held-out prompts."
        )
    cal, held = range(n_cal), range(n_cal, n)
    slack = slack or {}
    bound = CompositionalBound(
        blocks=[k for k, _ in chain],
        surrogate_blocks=[k for k, _ in chain if k in evaluation.eps],
        taus=[],
        slack=[],
        lipschitz=[],
        radii=[],
        bounds=[0.0],
        kind=options.kind,
        delta=delta,
        n_calibration=n_cal,
    )
    for k, surrogate in chain:
        fixed = taus is not None and k in taus
        bound.taus.append(taus[k] if fixed else float(_block_eps(evaluation, k, cal).max()))
        bound.slack.append(slack.get(k, 0.0))
        bound.radii.append(bound.bounds[-1])  # r_k = B_{k-1}
        cal_lips = _block_lipschitz(surrogate, trajectory, k, cal, bound.radii[-1], options)
        bound.lipschitz.append(float(cal_lips.max()))
        bound.bounds = _compose(bound, extra)
    misses = event_misses(chain, trajectory, evaluation, held, bound, options)
    each = delta / misses.shape[1]  # Bonferroni over every event
    names = [
        (k, event)
        for k in bound.blocks
        for event in (("eps", "lipschitz") if k in bound.surrogate_blocks else ("lipschitz",))
    ]
    for column, (k, event) in enumerate(names):
        j = bound.blocks.index(k)
        threshold = bound.taus[j] if event == "eps" else bound.lipschitz[j]
        count = int(misses[:, column].sum())
        upper = clopper_pearson_upper(count, len(held), each)
        bound.events.append(EventBound(k, event, threshold, len(held), count, each, upper))
    bound.joint_misses = int(misses.any(dim=1).sum())
    bound.joint_upper = clopper_pearson_upper(bound.joint_misses, len(held), delta)
    return bound
