"""certify's stages on prompts other than the certificates' own.

`verifier_prompts`: the verifier's prompt set (`prompts=`). Per certified block, eps_k on teacher
inputs and its ratio to the certificate's eps_k, coverage at the certificate's tau; the stitched
model's per-block and final deviation, ppl, KL, top-1; and the bound composed from the eps_k
measured on these prompts (+ the fp32 allowance), B_k = L_k B_{k-1} + eps_k with L_k on the tube
of radius B_{k-1} around these prompts' teacher inputs (sound; empirical when the sound chain is
unbounded, labelled so). The bound >= observed check is the one on the certificates' prompts.

The statements about fresh prompts are evaluate/fresh_stage.py's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from blockcert.cert.fp_allowance import chain_allowance
from blockcert.cert.lipschitz import LipschitzOptions
from blockcert.compose.chain import compose_chain
from blockcert.evaluate.prompt_sets import PromptSet
from blockcert.evaluate.trajectory import (
    PromptEvaluation,
    RaggedTrajectory,
    evaluate_prompts,
    ragged_teacher_trajectory,
)
from blockcert.models.adapters import BlockAdapter
from blockcert.surrogate.ir import Surrogate

IID_NOTE = (
    "statistical guarantees for fresh prompts drawn i.i.d. from the held-out prompts' "
    "distribution (the prompt is the unit); not worst case, and not about other text such as "
    "the stress set"
)


def certificate_tau(certificate: dict) -> float | None:
    """The first absolute coverage threshold a certificate claims (None if it claims none)."""
    return next((c["tau"] for c in certificate["metrics"]["coverage"] if c["kind"] == "abs"), None)


def _coverage_fraction(certificate: dict, tau: float) -> float | None:
    for c in certificate["metrics"]["coverage"]:
        if c["kind"] == "abs" and c["tau"] == tau and c.get("unit", "token") == "token":
            return c["fraction"]
    return None


def _float_or_none(q) -> float | None:
    return None if q is None else float(q)


def _ragged_chain(
    chain: Sequence[tuple[int, Surrogate]],
    eps: Sequence[float],
    certified: Sequence[int],
    trajectory: RaggedTrajectory,
    lipschitz: Mapping,
    min_radius: float,
    batch_size: int,
) -> dict:
    """The sound and empirical chains on ragged prompts, through compose.chain.compose_chain.

    B_k = min(L_k B_{k-1}, B_{k-1} + a_k) + eps_k; the sound L_k, a_k cover every prompt's tube
    at once (all length batches); the empirical L_k probes the first length batch.
    """
    composed = compose_chain(
        [(k, g, k in certified, e) for (k, g), e in zip(chain, eps, strict=True)],
        [trajectory.inputs(k) for k, _ in chain],
        batch_size,
        LipschitzOptions.from_config(lipschitz),
        min_radius,
    )
    links = composed.links
    return {
        "lipschitz_sound": [
            None if x.lipschitz_sound is None else float(x.lipschitz_sound) for x in links
        ],
        "lipschitz_empirical": [_float_or_none(x.lipschitz_empirical) for x in links],
        "saturation": [float(x.saturation) for x in links],
        "bound_sound": [float(x.bound_sound) for x in links],
        "bound_empirical": [_float_or_none(x.bound_empirical) for x in links],
    }


def _category_rows(prompt_set: PromptSet, evaluation: PromptEvaluation) -> dict:
    rows = {}
    for label, index in prompt_set.categories().items():
        part = evaluation.select(index).aggregate()
        rows[label] = {
            key: part[key]
            for key in ("n_prompts", "n_tokens", "observed_final_max", "ppl_delta", "kl_mean")
        } | {"top1_agreement": part["top1_agreement"] if part["n_targets"] else None}
    return rows


def _block_rows(chain, figures, allowance, composed, certificates, taus) -> list[dict]:
    """Per block of the chain: eps on these prompts (against the certificate's, where there is
    one), the fp32 allowance, the constants and bounds composed here, the observed deviation."""
    blocks = []
    observed = figures["block_deviation"]
    for j, (k, _) in enumerate(chain):
        row = {
            "block": k,
            "certified": k in certificates,
            "eps": figures["eps"].get(k, 0.0),
            "fp_allowance": allowance[k].total,
            "saturation": composed["saturation"][j],
            "lipschitz_sound": composed["lipschitz_sound"][j],
            "lipschitz_empirical": composed["lipschitz_empirical"][j],
            "bound_sound": composed["bound_sound"][j],
            "bound_empirical": composed["bound_empirical"][j],
            "observed": observed[k],
        }
        if k in certificates:
            cert_eps = certificates[k]["metrics"]["eps_max"]
            row |= {
                "eps_certificate": cert_eps,
                "eps_ratio": row["eps"] / cert_eps if cert_eps > 0 else None,
                "tau": taus[k],
                "coverage": figures["coverage"][k]["fraction"],
                "coverage_certificate": _coverage_fraction(certificates[k], taus[k]),
            }
        blocks.append(row)
    return blocks


def _per_prompt(prompt_set: PromptSet, evaluation: PromptEvaluation) -> dict:
    return {
        "label": prompt_set.labels,
        "n_tokens": evaluation.n_tokens.int().tolist(),
        "final_deviation": evaluation.final_deviation.tolist(),
        "ppl_delta": evaluation.ppl_delta.tolist(),
        "kl_mean": evaluation.kl_mean.tolist(),
    }


def verifier_prompts(
    adapter: BlockAdapter,
    prompt_set: PromptSet,
    surrogates: Mapping[int, Surrogate],
    certificates: Mapping[int, dict],
    chain: Sequence[tuple[int, Surrogate]],
    batch_size: int,
    lipschitz: Mapping,
) -> tuple[dict, list[str]]:
    """(report section, sound-bound violations) on the verifier's prompts.

    chain: (k, g_k) from the first certified block to the last (teacher IR where uncertified).
    """
    trajectory = ragged_teacher_trajectory(adapter, prompt_set.ids, batch_size)
    taus = {k: certificate_tau(c) or 0.0 for k, c in certificates.items()}
    evaluation = evaluate_prompts(adapter, surrogates, prompt_set.ids, trajectory, taus)
    figures = evaluation.aggregate()
    # the measured fp32 allowance on these prompts, at both ends of every tube
    allowance = chain_allowance(chain, trajectory.inputs)
    eps = [figures["eps"].get(k, 0.0) + allowance[k].total for k, _ in chain]
    median = torch.cat([h.norm(dim=-1).flatten() for h in trajectory.inputs(chain[0][0])]).median()
    min_radius = lipschitz["min_radius_fraction"] * float(median)
    composed = _ragged_chain(
        chain, eps, list(certificates), trajectory, lipschitz, min_radius, batch_size
    )
    bounds, observed = composed["bound_sound"], figures["block_deviation"]
    violations = [
        f"block {k}: observed deviation {observed[k]:.6g} on prompts={prompt_set.name} exceeds "
        f"B_k = {b:.6g} (sound)"
        for (k, _), b in zip(chain, bounds, strict=True)
        if observed[k] > b
    ]
    final = figures["observed_final_max"]
    section = {
        "name": prompt_set.name,
        "source": prompt_set.source,
        "sha256": prompt_set.sha256,
        "n_prompts": len(prompt_set),
        "n_tokens": prompt_set.n_tokens,
        "n_truncated": prompt_set.n_truncated,
        "batching": "by length, no padding",
        "bound": {
            "kind": "sound",
            "final": bounds[-1],
            "sound": composed["bound_sound"][-1],
            "empirical": composed["bound_empirical"][-1],
            "tightness": bounds[-1] / final if final > 0 else None,
        },
        "blocks": _block_rows(chain, figures, allowance, composed, certificates, taus),
        "stitched": {k: v for k, v in figures.items() if k not in ("eps", "coverage")},
        "categories": _category_rows(prompt_set, evaluation),
        "per_prompt": _per_prompt(prompt_set, evaluation),
        "violations": violations,
        "findings": [],
    }
    return section, violations


def comparison_lines(report: dict, section: dict) -> list[str]:
    """The table "certificate prompts vs your prompts" (terminal and markdown alike)."""
    s, y = report["stitched"], section["stitched"]
    rows = [("", "certificate prompts", f"your prompts ({section['name']})")]
    rows.append(
        (
            "prompts / tokens",
            f"{report['data']['n_prompts']} / {report['data']['n_tokens']}",
            f"{section['n_prompts']} / {section['n_tokens']}",
        )
    )
    for row in section["blocks"]:
        if row["certified"]:
            ratio = "n/a" if row["eps_ratio"] is None else f"{row['eps_ratio']:.3g}x"
            rows.append(
                (
                    f"eps block {row['block']}",
                    f"{row['eps_certificate']:.4g}",
                    f"{row['eps']:.4g} ({ratio})",
                )
            )
            cert_cov = row["coverage_certificate"]
            rows.append(
                (
                    f"coverage@{row['tau']:g} block {row['block']}",
                    "n/a" if cert_cov is None else f"{cert_cov:.4%}",
                    f"{row['coverage']:.4%}",
                )
            )
    rows += [
        (
            "global bound B_L",
            f"{report['bound']['claimed']:.4g} ({report['bound']['kind']})",
            f"{section['bound']['final']:.4g} ({section['bound']['kind']})",
        ),
        (
            "observed max deviation",
            f"{s['observed_final_max']:.4g}",
            f"{y['observed_final_max']:.4g}",
        ),
        ("perplexity baseline", f"{s['ppl_baseline']:.6f}", f"{y['ppl_baseline']:.6f}"),
        ("perplexity stitched", f"{s['ppl_stitched']:.6f}", f"{y['ppl_stitched']:.6f}"),
        ("perplexity delta", f"{s['ppl_delta']:.3g}", f"{y['ppl_delta']:.3g}"),
        ("mean KL (nats)", f"{s['kl_mean']:.3g}", f"{y['kl_mean']:.3g}"),
        ("top-1 agreement", f"{s['top1_agreement']:.4%}", f"{y['top1_agreement']:.4%}"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def run_prompt_stages(
    cfg,
    adapter: BlockAdapter,
    tokenizer,
    verified,
    states: list[torch.Tensor],
    chain: Sequence[tuple[int, Surrogate]],
    report: dict,
) -> tuple[list[str], list[str]]:
    """certify's stage after the stitched evaluation: `prompts=` (the verifier's prompt set).

    verified: certify's Verified (blocks[k].surrogate / .certificate, heldout, first). Adds
    report["prompts"]; returns (summary lines, sound violations).
    """
    from blockcert.evaluate.prompt_sets import context_length, load_prompt_set

    surrogates = {k: b.surrogate for k, b in verified.blocks.items()}
    certificates = {k: b.certificate for k, b in verified.blocks.items()}
    lines, violations = [], []
    if cfg.get("prompts") is not None:
        prompt_set = load_prompt_set(cfg.prompts, tokenizer, context_length(adapter.config))
        section, violations = verifier_prompts(
            adapter,
            prompt_set,
            surrogates,
            certificates,
            chain,
            cfg.batch_size,
            cfg.lipschitz,
        )
        section["table"] = comparison_lines(report, section)
        report["prompts"] = section
        report["findings"] += section["findings"]
        lines += section["table"]
    return lines, violations
