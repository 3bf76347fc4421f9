"""Teacher and stitched residual trajectories on evaluated prompts.

Teacher: h_0 = embed(tokens), h_k = f_k(h_{k-1}). Stitched: h~_0 = h_0, h~_k = g_k(h~_{k-1}) with
g_k the surrogate where one is given and the teacher block elsewhere. The deviation per block is
e_k = max over prompts and positions of ||h~_k - h_k||_2 (fp32).

Prompts of different lengths (`ragged_teacher_trajectory`, `evaluate_prompts`) are batched by
length, never padded, so every prompt's figures equal those of the prompt evaluated alone. Per
prompt p: eps_k(p) = max_t ||g_k(h_{k-1})_t - h_{k,t}|| on teacher inputs, e_k(p) the stitched
deviation, and the next-token figures (NLL sums, KL sum, top-1 agreements) over its s - 1
targets; aggregates are maxima over prompts and token-weighted means.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from blockcert.models.adapters import BlockAdapter
from blockcert.progress import progress
from blockcert.surrogate.interpret import run_graph
from blockcert.surrogate.ir import Surrogate


@torch.no_grad()
def teacher_trajectory(
    adapter: BlockAdapter, input_ids: torch.Tensor, batch_size: int
) -> list[torch.Tensor]:
    """[h_0, ..., h_L], each `[n_prompts, seq, d_model]` fp32 on CPU."""
    states: list[list[torch.Tensor]] = [[] for _ in range(adapter.num_blocks + 1)]
    starts = range(0, len(input_ids), batch_size)
    for start in progress(starts, len(starts), "teacher pass", "batches"):
        for k, h in enumerate(teacher_states(adapter, input_ids[start : start + batch_size])):
            states[k].append(h)
    return [torch.cat(s) for s in states]


@torch.no_grad()
def teacher_states(adapter: BlockAdapter, ids: torch.Tensor) -> list[torch.Tensor]:
    """[h_0, ..., h_L] of one batch `ids [b, s]`, each `[b, s, d_model]` fp32 on CPU."""
    h = adapter.embed(ids)
    states = [h.float().cpu()]
    for k in range(adapter.num_blocks):
        h = adapter.block(k, h)
        states.append(h.float().cpu())
    return states


def trajectory_is_exact(adapter: BlockAdapter) -> bool:
    """Whether teacher_trajectory stores the very tensors it feeds forward (a float32 teacher),
    so that a teacher block re-run on its batches gives the stored next state exactly."""
    return adapter.teacher.model.dtype == torch.float32


@dataclass
class StitchedResult:
    block_deviation: list[float]  # e_k for k = 1..L (after block k-1, 0-based)
    final_token_deviation: torch.Tensor  # ||h~_L - h_L|| per token, flattened
    prompt_deviation: torch.Tensor  # [n_prompts, L]: e_k of each prompt
    ppl_baseline: float
    ppl_stitched: float
    kl_mean: float  # mean over positions of KL(baseline || stitched), nats
    top1_agreement: float
    n_tokens: int

    @property
    def ppl_delta(self) -> float:
        return self.ppl_stitched - self.ppl_baseline


def _next_token_stats(logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs [b, s-1, V], targets [b, s-1]) for next-token prediction."""
    return F.log_softmax(logits[:, :-1].double(), dim=-1), ids[:, 1:]


@dataclass
class BatchFigures:
    """Per-prompt figures of one batch of equal-length prompts (all fp64, shape [b] unless said)."""

    deviation: torch.Tensor  # [b, L]: max_t ||h~_k - h_k|| per block
    final_gap: torch.Tensor  # [b, s]: ||h~_L - h_L|| per token
    nll_baseline: torch.Tensor
    nll_stitched: torch.Tensor
    kl: torch.Tensor  # summed over positions
    kl_max: torch.Tensor  # the largest over positions
    agree: torch.Tensor  # top-1 agreements
    n_targets: int  # next-token targets per prompt (s - 1)


def run_block(adapter: BlockAdapter, surrogates: Mapping[int, Surrogate], k: int, h):
    if k in surrogates:
        return run_graph(surrogates[k].graph, surrogates[k].weights, h)
    return adapter.block(k, h).float()


@torch.no_grad()
def stitched_batch(
    adapter: BlockAdapter,
    surrogates: Mapping[int, Surrogate],
    ids: torch.Tensor,
    states: list[torch.Tensor],
    exact: Mapping[int, bool] | None = None,
) -> BatchFigures:
    """Stitched model on one batch `ids [b, s]` against its teacher states `[b, s, d]` each.

    exact[k]: surrogate k is known to map this batch's h_k to h_{k+1} exactly; the teacher's own
    blocks do whenever the states are teacher_trajectory's batches of a float32 teacher
    (trajectory_is_exact). While the stitched state IS the teacher's, such a block is not run
    again (its output is h_{k+1}, its gap 0), and the stitched logits are the baseline's when
    the last state is the teacher's.
    """
    exact = exact or {}
    teacher_exact = trajectory_is_exact(adapter)
    h, gaps = states[0], []
    for k in range(adapter.num_blocks):
        reproduces = exact.get(k, False) if k in surrogates else teacher_exact
        if h is states[k] and reproduces:
            h, gap = states[k + 1], torch.zeros(states[k + 1].shape[:-1])
        else:
            h = run_block(adapter, surrogates, k, h)
            gap = (h - states[k + 1]).norm(dim=-1)
            if not gap.any() and torch.equal(h, states[k + 1]):
                h = states[k + 1]  # back on the teacher's path
        gaps.append(gap.amax(-1).double())
    base_lp, targets = _next_token_stats(adapter.head(states[-1]), ids)
    if h is states[-1]:
        stitched_lp = base_lp
    else:
        stitched_lp, _ = _next_token_stats(adapter.head(h), ids)
    kl = (base_lp.exp() * (base_lp - stitched_lp)).sum(-1)  # KL(teacher || stitched) [b, s-1]
    return BatchFigures(
        deviation=torch.stack(gaps, dim=-1),
        final_gap=gap,
        nll_baseline=-base_lp.gather(-1, targets[..., None]).sum((1, 2)),
        nll_stitched=-stitched_lp.gather(-1, targets[..., None]).sum((1, 2)),
        kl=kl.sum(1),
        kl_max=kl.amax(1) if kl.shape[1] else kl.sum(1),  # a one-token prompt: 0
        agree=(base_lp.argmax(-1) == stitched_lp.argmax(-1)).sum(-1).double(),
        n_targets=targets.shape[1],
    )


@torch.no_grad()
def stitched_evaluation(
    adapter: BlockAdapter,
    surrogates: Mapping[int, Surrogate],
    input_ids: torch.Tensor,
    teacher_states: list[torch.Tensor],
    batch_size: int,
    exact: Mapping[int, torch.Tensor] | None = None,
) -> StitchedResult:
    """Run the stitched model and compare it with the teacher trajectory and logits.

    teacher_states: teacher_trajectory(adapter, input_ids, batch_size). exact[k] `[n_prompts]`:
    the prompts whose teacher input h_k surrogate k is known to map to h_{k+1} exactly in these
    batches (ErrorReport.exact_prompts); on batches of such prompts the block, like the
    teacher's own blocks, is not run again while the stitched state is the teacher's.
    """
    exact = exact or {}
    deviation, final, nll_base, nll_stitched, kl, agree, count = [], [], 0.0, 0.0, 0.0, 0, 0
    starts = range(0, len(input_ids), batch_size)
    for start in progress(starts, len(starts), "stitched model", "batches"):
        rows = slice(start, start + batch_size)
        batch = stitched_batch(
            adapter,
            surrogates,
            input_ids[rows],
            [s[rows] for s in teacher_states],
            {k: bool(same[rows].all()) for k, same in exact.items()},
        )
        deviation.append(batch.deviation)
        final.append(batch.final_gap.flatten())
        nll_base += float(batch.nll_baseline.sum())
        nll_stitched += float(batch.nll_stitched.sum())
        kl += float(batch.kl.sum())
        agree += int(batch.agree.sum())
        count += batch.n_targets * len(batch.agree)
    per_prompt = torch.cat(deviation)
    return StitchedResult(
        block_deviation=per_prompt.amax(0).tolist(),
        final_token_deviation=torch.cat(final),
        prompt_deviation=per_prompt,
        ppl_baseline=float(torch.tensor(nll_base / count).exp()),
        ppl_stitched=float(torch.tensor(nll_stitched / count).exp()),
        kl_mean=kl / count,
        top1_agreement=agree / count,
        n_tokens=count,
    )


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Prompt indices grouped by length (stable), in batches of at most `batch_size`."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(int(n), []).append(i)
    return [
        rows[start : start + batch_size]
        for rows in groups.values()
        for start in range(0, len(rows), batch_size)
    ]


@dataclass
class RaggedTrajectory:
    """Teacher states of prompts of different lengths, one equal-length batch at a time.

    batches[b]: prompt indices of batch b; states[b][k]: h_k of that batch `[n_b, s_b, d]` fp32.
    """

    batches: list[list[int]]
    states: list[list[torch.Tensor]]

    @classmethod
    def from_states(cls, states: list[torch.Tensor], batch_size: int) -> RaggedTrajectory:
        """Wrap an equal-length trajectory ([h_0..h_L], `[n, s, d]` each) without copying."""
        n = len(states[0])
        batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
        return cls(batches, [[h[rows[0] : rows[-1] + 1] for h in states] for rows in batches])

    def inputs(self, k: int) -> list[torch.Tensor]:
        """h_k of every batch (the inputs of block k)."""
        return [states[k] for states in self.states]

    def prompt_states(self, i: int, k: int) -> torch.Tensor:
        """h_k of prompt i alone, `[1, s_i, d]`."""
        for rows, states in zip(self.batches, self.states, strict=True):
            if i in rows:
                j = rows.index(i)
                return states[k][j : j + 1]
        raise IndexError(i)


@torch.no_grad()
def ragged_teacher_trajectory(
    adapter: BlockAdapter, prompts: Sequence[torch.Tensor], batch_size: int
) -> RaggedTrajectory:
    """Teacher trajectory of `prompts` (`[len_i]` int64 each), batched by length."""
    batches = length_batches([len(p) for p in prompts], batch_size)
    states = [
        teacher_trajectory(adapter, torch.stack([prompts[i] for i in rows]), batch_size)
        for rows in batches
    ]
    return RaggedTrajectory(batches, states)


@dataclass
class PromptEvaluation:
    """Per-prompt figures, rows in prompt order (fp64; n = number of prompts).

    eps[k], covered[k]: for each surrogate block k, eps_k(p) on teacher inputs and the number
    of the prompt's tokens with error <= tau_k. deviation `[n, L]`: stitched e_k(p).
    """

    n_tokens: torch.Tensor
    n_targets: torch.Tensor
    eps: dict[int, torch.Tensor]
    covered: dict[int, torch.Tensor]
    taus: dict[int, float]
    deviation: torch.Tensor
    nll_baseline: torch.Tensor
    nll_stitched: torch.Tensor
    kl: torch.Tensor
    agree: torch.Tensor

    @property
    def final_deviation(self) -> torch.Tensor:
        return self.deviation[:, -1]

    def _per_target(self, total: torch.Tensor) -> torch.Tensor:
        # a one-token prompt has no next-token target: its figures count as 0 (no prediction)
        return total / self.n_targets.clamp_min(1)

    @property
    def ppl_baseline(self) -> torch.Tensor:
        return self._per_target(self.nll_baseline).exp()

    @property
    def ppl_stitched(self) -> torch.Tensor:
        return self._per_target(self.nll_stitched).exp()

    @property
    def ppl_delta(self) -> torch.Tensor:
        return self.ppl_stitched - self.ppl_baseline

    @property
    def kl_mean(self) -> torch.Tensor:
        return self._per_target(self.kl)

    @property
    def top1_agreement(self) -> torch.Tensor:
        return torch.where(self.n_targets > 0, self._per_target(self.agree), 1.0)

    def select(self, rows: Sequence[int]) -> PromptEvaluation:
        """The same figures restricted to the prompts `rows`."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        return PromptEvaluation(
            n_tokens=self.n_tokens[index],
            n_targets=self.n_targets[index],
            eps={k: v[index] for k, v in self.eps.items()},
            covered={k: v[index] for k, v in self.covered.items()},
            taus=dict(self.taus),
            deviation=self.deviation[index],
            nll_baseline=self.nll_baseline[index],
            nll_stitched=self.nll_stitched[index],
            kl=self.kl[index],
            agree=self.agree[index],
        )

    def aggregate(self) -> dict:
        """Figures over all prompts: maxima of deviations, token-weighted means of the rest."""
        targets = float(self.n_targets.sum())
        tokens = float(self.n_tokens.sum())
        ppl_base = float(torch.tensor(float(self.nll_baseline.sum()) / targets).exp())
        ppl_stitched = float(torch.tensor(float(self.nll_stitched.sum()) / targets).exp())
        return {
            "n_prompts": len(self.n_tokens),
            "n_tokens": int(tokens),
            "eps": {k: float(v.max()) for k, v in self.eps.items()},
            "coverage": {
                k: {"tau": self.taus[k], "fraction": float(v.sum()) / tokens}
                for k, v in self.covered.items()
            },
            "block_deviation": self.deviation.amax(0).tolist(),
            "observed_final_max": float(self.final_deviation.max()),
            "ppl_baseline": ppl_base,
            "ppl_stitched": ppl_stitched,
            "ppl_delta": ppl_stitched - ppl_base,
            "kl_mean": float(self.kl.sum()) / targets,
            "top1_agreement": float(self.agree.sum()) / targets,
            "n_targets": int(targets),
        }


@torch.no_grad()
def _teacher_input_errors(
    surrogate: Surrogate, x_in: torch.Tensor, x_out: torch.Tensor
) -> tuple[torch.Tensor, bool]:
    """(||g(h)_t - f(h)_t||_2 per token `[b, s]` fp32 on teacher inputs, as the certificate;
    whether g(h) equals f(h) exactly on the whole batch)."""
    out = run_graph(surrogate.graph, surrogate.weights, x_in.float())
    return (out - x_out.float()).norm(dim=-1), torch.equal(out, x_out.float())


@torch.no_grad()
def evaluate_prompts(
    adapter: BlockAdapter,
    surrogates: Mapping[int, Surrogate],
    prompts: Sequence[torch.Tensor],
    trajectory: RaggedTrajectory,
    taus: Mapping[int, float],
) -> PromptEvaluation:
    """Per-prompt eps_k, coverage at tau_k, stitched deviations and next-token figures.

    trajectory: ragged_teacher_trajectory or RaggedTrajectory.from_states (the batches the
    stitched run uses); blocks that reproduce it exactly are not run again (stitched_batch).
    """
    n = len(prompts)
    zeros = lambda: torch.zeros(n, dtype=torch.float64)  # noqa: E731
    eps = {k: zeros() for k in surrogates}
    covered = {k: zeros() for k in surrogates}
    deviation = torch.zeros(n, adapter.num_blocks, dtype=torch.float64)
    nll_base, nll_stitched, kl, agree, targets = zeros(), zeros(), zeros(), zeros(), zeros()
    for rows, states in zip(trajectory.batches, trajectory.states, strict=True):
        index = torch.tensor(rows)
        ids = torch.stack([prompts[i] for i in rows])
        exact = {}
        for k, surrogate in surrogates.items():
            errors, exact[k] = _teacher_input_errors(surrogate, states[k], states[k + 1])
            eps[k][index] = errors.amax(-1).double()
            covered[k][index] = (errors <= taus[k]).sum(-1).double()
        batch = stitched_batch(adapter, surrogates, ids, states, exact)
        deviation[index] = batch.deviation
        nll_base[index], nll_stitched[index] = batch.nll_baseline, batch.nll_stitched
        kl[index], agree[index] = batch.kl, batch.agree
        targets[index] = float(batch.n_targets)
    return PromptEvaluation(
        n_tokens=torch.tensor([len(p) for p in prompts], dtype=torch.float64),
        n_targets=targets,
        eps=eps,
        covered=covered,
        taus=dict(taus),
        deviation=deviation,
        nll_baseline=nll_base,
        nll_stitched=nll_stitched,
        kl=kl,
        agree=agree,
    )
