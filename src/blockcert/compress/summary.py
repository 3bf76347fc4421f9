"""The compressed model's figures: the stitched model against the teacher on held-out prompts
(the certificates' own) and on the built-in stress set, with the parameters kept.

Per prompt set: stitched perplexity and its delta to the teacher's, mean KL(teacher ||
stitched) per next token (nats), top-1 agreement, and the largest final-state deviation
max_t ||h~_L - h_L||. params_kept: surrogate parameters over the replaced teacher blocks'.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from blockcert.evaluate.prompt_sets import STRESS, context_length, load_prompt_set
from blockcert.evaluate.trajectory import (
    RaggedTrajectory,
    evaluate_prompts,
    ragged_teacher_trajectory,
    teacher_trajectory,
)
from blockcert.models.adapters import BlockAdapter
from blockcert.surrogate.ir import Surrogate

FIGURES = ("ppl_baseline", "ppl_stitched", "ppl_delta", "kl_mean", "top1_agreement")


def _figures(evaluation) -> dict:
    aggregate = evaluation.aggregate()
    out = {name: aggregate[name] for name in FIGURES}
    out.update(
        n_prompts=aggregate["n_prompts"],
        n_targets=aggregate["n_targets"],
        final_deviation_max=aggregate["observed_final_max"],
        eps_max=max(aggregate["eps"].values(), default=0.0),  # on teacher inputs, all blocks
    )
    return out


def params_kept(surrogates: Mapping[int, Surrogate]) -> dict:
    params = sum(s.num_params for s in surrogates.values())
    teacher = sum(s.graph.capacity["teacher_params"] for s in surrogates.values())
    return {"params": params, "teacher_params": teacher, "fraction": params / teacher}


class StitchedEvaluator:
    """The teacher's trajectories of the held-out prompts (and the stress set) computed once;
    calling it with surrogates gives the stitched model's figures on both."""

    def __init__(
        self, adapter: BlockAdapter, heldout: torch.Tensor, stress: bool = True, batch_size=8
    ):
        self.adapter = adapter
        with torch.no_grad():
            states = teacher_trajectory(adapter, heldout, batch_size)
        self.sets = {"heldout": (list(heldout), RaggedTrajectory.from_states(states, batch_size))}
        if stress:
            tokenizer = adapter.teacher.tokenizer
            stress_set = load_prompt_set(STRESS, tokenizer, context_length(adapter.config))
            trajectory = ragged_teacher_trajectory(adapter, stress_set.ids, batch_size)
            self.sets["stress"] = (stress_set.ids, trajectory)

    @torch.no_grad()
    def __call__(self, surrogates: Mapping[int, Surrogate]) -> dict:
        """{heldout: figures, stress: figures, params: {params, teacher_params, fraction}}."""
        taus = {k: float("inf") for k in surrogates}
        summary = {"params": params_kept(surrogates)}
        for name, (prompts, trajectory) in self.sets.items():
            evaluation = evaluate_prompts(self.adapter, surrogates, prompts, trajectory, taus)
            summary[name] = _figures(evaluation)
        return summary


def summary_lines(summary: dict) -> list[str]:
    """The compressed model in a few lines (what train.py prints after the blocks table)."""
    p = summary["params"]
    lines = [
        f"compressed: {p['params']:,} of {p['teacher_params']:,} block parameters kept "
        f"({p['fraction']:.1%})"
    ]
    for name in ("heldout", "stress"):
        f = summary.get(name)
        if f is None:
            continue
        lines.append(
            f"  {name} ({f['n_prompts']} prompts, {f['n_targets']} targets): ppl "
            f"{f['ppl_baseline']:.3f} -> {f['ppl_stitched']:.3f} ({f['ppl_delta']:+.3f}), KL "
            f"{f['kl_mean']:.4f} nats, top-1 agreement {f['top1_agreement']:.2%}"
        )
    lines.append(
        f"  max eps over blocks (held-out, teacher inputs): {summary['heldout']['eps_max']:.4g}"
    )
    return lines
