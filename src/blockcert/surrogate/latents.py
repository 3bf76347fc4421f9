"""What a transcoder's latents do, measured on held-out prompts: latents.json and latents.md.

For every held-out token t (teacher block input h_t): the transcoder's latents a_t =
topk_relu(W_enc w_t + b_enc) (node `hidden`) and its MLP output; the teacher's MLP output comes
from the full-capacity teacher block on the same input. Figures:
  mean L0        mean_t #{i : a_t,i > 0}  (<= k by construction)
  dead fraction  fraction of latents with a_t,i = 0 on every held-out token
  FVU            sum_t ||mlp_t - mlp^teacher_t||^2 / sum_t ||mlp^teacher_t - mean||^2
                 (fraction of variance unexplained, as sparsify reports it)
  top latents    the `n_latents` latents that fire on the most tokens; for each, the
                 `n_contexts` held-out tokens where it is largest, shown in their left context
                 (the block is causal: the latent has seen only that context).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from blockcert.atomic import write_text_atomic
from blockcert.surrogate.interpret import run_graph
from blockcert.surrogate.ir import Surrogate
from blockcert.surrogate.view import BlockView, block_view

LATENTS_JSON = "latents.json"
LATENTS_MD = "latents.md"
CONTEXT_TOKENS = 12  # tokens of left context shown


@torch.no_grad()
def latent_report(
    surrogate: Surrogate,
    teacher_block: Surrogate,
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]],
    token_ids: torch.Tensor,
    decode: Callable[[list[int]], str],
    n_latents: int = 16,
    n_contexts: int = 8,
) -> dict:
    """The report of a transcoder surrogate on held-out `pairs` ([b, s, d] each, in the order of
    `token_ids` [n_prompts, s]); `decode` turns token ids into text."""
    view = block_view(surrogate)
    width, k = view.mlp.width, view.mlp.k
    keep = (BlockView.HIDDEN, BlockView.MLP_OUT)
    acts, residual, mlp_teacher = [], 0.0, []
    for x_in, _ in pairs:
        _, mine = run_graph(surrogate.graph, surrogate.weights, x_in.float(), keep=keep)
        _, ref = run_graph(teacher_block.graph, teacher_block.weights, x_in.float(), keep=keep)
        target = ref[BlockView.MLP_OUT].reshape(-1, view.d_model).double()
        residual += float((mine[BlockView.MLP_OUT].reshape(-1, view.d_model) - target).pow(2).sum())
        mlp_teacher.append(target)
        acts.append(mine[BlockView.HIDDEN].reshape(-1, width))
    acts = torch.cat(acts)  # [N, width], at most k nonzeros per row
    target = torch.cat(mlp_teacher)
    variance = float((target - target.mean(0)).pow(2).sum())
    seq = token_ids.shape[1]
    if acts.shape[0] != token_ids.numel():
        raise ValueError(f"{acts.shape[0]} held-out tokens but {token_ids.numel()} token ids")
    fired = acts > 0
    frequency = fired.float().mean(0)
    order = torch.argsort(frequency, descending=True)[: min(n_latents, width)]
    latents = []
    for latent in order.tolist():
        column = acts[:, latent]
        top = column.topk(min(n_contexts, len(column)))
        contexts = []
        for value, flat in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            if value <= 0:
                break
            prompt, position = divmod(flat, seq)
            row = token_ids[prompt].tolist()
            left = row[max(0, position - CONTEXT_TOKENS) : position]
            contexts.append(
                {
                    "prompt": prompt,
                    "position": position,
                    "token": decode([row[position]]),
                    "context": decode(left),
                    "activation": value,
                }
            )
        latents.append(
            {
                "latent": latent,
                "frequency": float(frequency[latent]),
                "max_activation": float(column.max()),
                "top_contexts": contexts,
            }
        )
    return {
        "width": width,
        "k": k,
        "n_tokens": int(acts.shape[0]),
        "n_prompts": int(token_ids.shape[0]),
        "mean_l0": float(fired.sum(-1).float().mean()),
        "max_l0": int(fired.sum(-1).max()),
        "dead_fraction": float((~fired.any(0)).float().mean()),
        "fvu": residual / variance if variance > 0 else float("nan"),
        "latents": latents,
    }


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", "⏎").replace("`", "'")


def latent_markdown(report: dict, title: str) -> str:
    lines = [
        f"# Transcoder latents: {title}",
        "",
        f"{report['width']} latents, k = {report['k']}; {report['n_tokens']} held-out tokens "
        f"({report['n_prompts']} prompts).",
        "",
        f"- mean L0: {report['mean_l0']:.2f} (max {report['max_l0']}, k = {report['k']})",
        f"- dead latents (never active on held-out tokens): {report['dead_fraction']:.2%}",
        f"- FVU of the MLP output: {report['fvu']:.4f}",
        "",
        f"The {len(report['latents'])} most frequently active latents; each row is a held-out "
        "token where the latent is largest, shown after its left context as **[token]**.",
    ]
    for entry in report["latents"]:
        lines += [
            "",
            f"## latent {entry['latent']}: active on {entry['frequency']:.2%} of tokens, "
            f"max {entry['max_activation']:.3g}",
            "",
            "| activation | context **[token]** | prompt:position |",
            "|---:|---|---|",
        ]
        for c in entry["top_contexts"]:
            lines.append(
                f"| {c['activation']:.3f} | {_cell(c['context'])}**[{_cell(c['token'])}]** "
                f"| {c['prompt']}:{c['position']} |"
            )
    return "\n".join(lines) + "\n"


def write_latent_report(run_dir: str | Path, report: dict, title: str) -> None:
    run_dir = Path(run_dir)
    write_text_atomic(run_dir / LATENTS_JSON, json.dumps(report, indent=1, allow_nan=False))
    write_text_atomic(run_dir / LATENTS_MD, latent_markdown(report, title))
