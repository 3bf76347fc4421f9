"""What a transcoder's latents do, measured on held-out prompts: latents.json and latents.md.

For every held-out token t (teacher block input h_t): the transcoder's latents a_t =
topk_relu(W_enc w_t + b_enc) (node `hidden`) and its MLP output; the teacher's MLP output comes
from the full-capacity teacher block on the same input. A gated transcoder's latents are signed
(relu(gate) * value): a latent fires where it is non-zero, its peak and mean are taken by
magnitude (|a|), its contexts come in two lists, largest positive and most negative
(`negative_contexts`), and the histogram spans both signs.
Figures:
  mean L0        mean_t #{i : a_t,i != 0}  (<= k by construction)
  dead fraction  fraction of latents with a_t,i = 0 on every held-out token
  FVU            sum_t ||mlp_t - mlp^teacher_t||^2 / sum_t ||mlp^teacher_t - mean||^2
                 (fraction of variance unexplained, as sparsify reports it)
  per latent     frequency (fraction of tokens where it fires) and largest activation, for all
  shown latents  the `n_frequent` most frequent and `n_latents - n_frequent` drawn at random
                 (seeded) from the other live ones, each with: its `n_contexts` held-out tokens
                 where it is largest, shown with CONTEXT_TOKENS tokens before and RIGHT_TOKENS
                 after and the latent's activation on each (the block is causal: the value at
                 the marked token has seen only what precedes it); the histogram of its non-zero
                 activations; and, given `logit_effect`, the tokens its decoder direction
                 promotes and suppresses most (DIRECT logit effects: the unembedding of the
                 direction through the final norm, as if the later blocks passed it unchanged,
                 which they do not: an approximation, labelled so).
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
RIGHT_TOKENS = 4  # tokens after the marked one
HISTOGRAM_BINS = 24
LOGIT_TOKENS = 8  # promoted and suppressed tokens shown per latent
LOGIT_LABEL = (
    "direct logit effect: the unembedding of the latent's decoder direction through the final "
    "norm, as if the later blocks passed it unchanged (an approximation)"
)

Decode = Callable[[list[int]], str]
LogitEffect = Callable[[torch.Tensor], torch.Tensor]  # directions [n, d] -> logits [n, vocab]


@torch.no_grad()
def _activations(surrogate: Surrogate, teacher_block: Surrogate, pairs) -> tuple:
    """(latents [N, width], FVU of the MLP output) over every held-out token."""
    view = block_view(surrogate)
    keep = (BlockView.HIDDEN, BlockView.MLP_OUT)
    acts, residual, targets = [], 0.0, []
    for x_in, _ in pairs:
        _, mine = run_graph(surrogate.graph, surrogate.weights, x_in.float(), keep=keep)
        _, ref = run_graph(teacher_block.graph, teacher_block.weights, x_in.float(), keep=keep)
        target = ref[BlockView.MLP_OUT].reshape(-1, view.d_model).double()
        residual += float((mine[BlockView.MLP_OUT].reshape(-1, view.d_model) - target).pow(2).sum())
        targets.append(target)
        acts.append(mine[BlockView.HIDDEN].reshape(-1, view.mlp.width))
    target = torch.cat(targets)
    variance = float((target - target.mean(0)).pow(2).sum())
    return torch.cat(acts), residual / variance if variance > 0 else float("nan")


def _chosen(frequency: torch.Tensor, n_latents: int, n_frequent: int, seed: int) -> list[int]:
    """The shown latents, most frequent first (see the module docstring)."""
    order = torch.argsort(frequency, descending=True)
    frequent = order[: min(n_frequent, n_latents)]
    others = order[len(frequent) :]
    others = others[frequency[others] > 0]
    draw = torch.randperm(len(others), generator=torch.Generator().manual_seed(seed))
    sampled = others[draw[: max(0, n_latents - len(frequent))]]
    chosen = torch.cat([frequent, sampled])
    return chosen[torch.argsort(frequency[chosen], descending=True, stable=True)].tolist()


def _contexts(
    column: torch.Tensor, token_ids: torch.Tensor, decode: Decode, n: int, sign: float = 1.0
) -> list:
    """The n held-out tokens where `sign * column` [N] is largest and positive, each in its
    window of tokens (sign -1: the most negative activations of a signed latent)."""
    seq = token_ids.shape[1]
    per_prompt = column.view(-1, seq)
    top = (sign * column).topk(min(n, len(column)))
    contexts = []
    for score, flat in zip(top.values.tolist(), top.indices.tolist(), strict=True):
        if score <= 0:
            break
        value = float(column[flat])
        prompt, position = divmod(flat, seq)
        row = token_ids[prompt].tolist()
        start, stop = max(0, position - CONTEXT_TOKENS), min(seq, position + RIGHT_TOKENS + 1)
        window = [
            {"text": decode([row[t]]), "activation": float(per_prompt[prompt, t])}
            for t in range(start, stop)
        ]
        contexts.append(
            {
                "prompt": prompt,
                "position": position,
                "token": decode([row[position]]),
                "context": decode(row[start:position]),
                "activation": value,
                "tokens": window,
                "focus": position - start,
            }
        )
    return contexts


def _histogram(column: torch.Tensor) -> dict:
    """Counts of the latent's non-zero activations in HISTOGRAM_BINS equal bins of [min(0, lowest),
    max(0, highest)] ([0, max] for non-negative latents)."""
    active = column[column != 0].double()
    if not len(active):
        return {"edges": [0.0, 0.0], "counts": [0]}
    bottom, top = min(0.0, float(active.min())), max(0.0, float(active.max()))
    counts = torch.histc(active, bins=HISTOGRAM_BINS, min=bottom, max=top)
    edges = torch.linspace(bottom, top, HISTOGRAM_BINS + 1)
    return {"edges": edges.tolist(), "counts": [int(c) for c in counts.tolist()]}


def _logits(effects: torch.Tensor, decode: Decode) -> dict:
    """The LOGIT_TOKENS most promoted and most suppressed tokens of one latent's effects."""
    up, down = effects.topk(LOGIT_TOKENS), (-effects).topk(LOGIT_TOKENS)
    return {
        "promoted": [
            [decode([i]), float(v)] for v, i in zip(up.values, up.indices.tolist(), strict=True)
        ],
        "suppressed": [
            [decode([i]), -float(v)]
            for v, i in zip(down.values, down.indices.tolist(), strict=True)
        ],
    }


def latent_report(
    surrogate: Surrogate,
    teacher_block: Surrogate,
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]],
    token_ids: torch.Tensor,
    decode: Decode,
    n_latents: int = 64,
    n_contexts: int = 8,
    logit_effect: LogitEffect | None = None,
    n_frequent: int = 16,
    seed: int = 0,
) -> dict:
    """The report of a transcoder surrogate on held-out `pairs` ([b, s, d] each, in the order of
    `token_ids` [n_prompts, s]); `decode` turns token ids into text."""
    view = block_view(surrogate)
    width, k = view.mlp.width, view.mlp.k
    acts, fvu = _activations(surrogate, teacher_block, pairs)
    if acts.shape[0] != token_ids.numel():
        raise ValueError(f"{acts.shape[0]} held-out tokens but {token_ids.numel()} token ids")
    fired = acts != 0
    frequency = fired.float().mean(0)
    peak = acts.abs().amax(0)
    chosen = _chosen(frequency, n_latents, n_frequent, seed)
    effects = None
    if logit_effect is not None and chosen:
        effects = logit_effect(view.mlp.down.matrix(torch.float32)[:, chosen].T)
    latents = []
    for row, latent in enumerate(chosen):
        column = acts[:, latent]
        entry = {
            "latent": latent,
            "frequency": float(frequency[latent]),
            "max_activation": float(peak[latent]),
            "mean_activation": float(column[column != 0].abs().mean())
            if fired[:, latent].any()
            else 0.0,
            "histogram": _histogram(column),
            "top_contexts": _contexts(column, token_ids, decode, n_contexts),
        }
        if view.mlp.gated:
            entry["negative_contexts"] = _contexts(column, token_ids, decode, n_contexts, -1.0)
        if effects is not None:
            entry["logits"] = _logits(effects[row], decode)
        latents.append(entry)
    return {
        "family": view.family,
        "skip": view.mlp.skip is not None,
        "signed": view.mlp.gated,
        "width": width,
        "k": k,
        "n_tokens": int(acts.shape[0]),
        "n_prompts": int(token_ids.shape[0]),
        "mean_l0": float(fired.sum(-1).float().mean()),
        "max_l0": int(fired.sum(-1).max()),
        "dead_fraction": float((~fired.any(0)).float().mean()),
        "fvu": fvu,
        "frequencies": frequency.tolist(),
        "max_activations": peak.tolist(),
        "logit_label": LOGIT_LABEL if effects is not None else None,
        "latents": latents,
    }


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", "⏎").replace("`", "'")


def _context_lines(contexts: list) -> list[str]:
    lines = ["| activation | context **[token]** | prompt:position |", "|---:|---|---|"]
    for c in contexts:
        lines.append(
            f"| {c['activation']:.3f} | {_cell(c['context'])}**[{_cell(c['token'])}]** "
            f"| {c['prompt']}:{c['position']} |"
        )
    return lines


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
        f"{len(report['latents'])} latents (the most frequent, then a random sample of the other "
        "live ones); each row is a held-out token where the latent is largest, shown after its "
        "left context as **[token]**. latents.html shows them with every token's activation.",
    ]
    for entry in report["latents"]:
        lines += [
            "",
            f"## latent {entry['latent']}: active on {entry['frequency']:.2%} of tokens, "
            f"max {entry['max_activation']:.3g}",
            "",
        ]
        lines += _context_lines(entry["top_contexts"])
        if entry.get("negative_contexts"):
            lines += ["", "most negative:", "", *_context_lines(entry["negative_contexts"])]
    return "\n".join(lines) + "\n"


def write_latent_report(run_dir: str | Path, report: dict, title: str) -> None:
    run_dir = Path(run_dir)
    write_text_atomic(run_dir / LATENTS_JSON, json.dumps(report, indent=1, allow_nan=False))
    write_text_atomic(run_dir / LATENTS_MD, latent_markdown(report, title))
