"""edit_report.json / .md and the trade-off plot, written atomically; W&B artifact.

The markdown puts the editing metrics (efficacy, generalisation, specificity, locality) beside
the certified ones (eps of the edited block, and with edit.certify=true the global bound and
the observed drift from certify.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from blockcert.atomic import write_atomic, write_text_atomic  # noqa: E402

REPORT_FILE = "edit_report.json"
MARKDOWN_FILE = "edit_report.md"
PLOT_FILE = "edit_tradeoff.png"


def _g(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}g}"


def _query_table(title: str, rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        f"## {title}",
        "",
        "| prompt | P(target) before | after | rank before | after | top-1 before | after |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b, a = r["before"], r["after"]
        lines.append(
            f"| {r['prompt']} | {_g(b['prob'])} | {_g(a['prob'])} | {b['rank']} | {a['rank']} "
            f"| {b['top_token']} | {a['top_token']} |"
        )
    return lines


def render_markdown(report: dict) -> str:
    c, b, loc, t = report["certificate"], report["budget"], report["locality"], report["timing"]
    facts = "; ".join(f"{f['prompt']!r} -> {f['target']!r}" for f in report["facts"])
    lines = [
        f"# Edit of block {report['block']} of {report['model']['name']} ({report['method']})",
        "",
        f"Facts: {facts}. Success ({b['success_criterion']}): **{report['success']}**.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| efficacy: mean P(target) before -> after | "
        f"{_g(_mean_prob(report['efficacy'], 'before'))} -> "
        f"{_g(_mean_prob(report['efficacy'], 'after'))} |",
        f"| generalisation: mean P(target) on paraphrases before -> after | "
        f"{_g(_mean_prob(report['generalisation'], 'before'))} -> "
        f"{_g(_mean_prob(report['generalisation'], 'after'))} |",
        f"| locality: mean KL(original \\|\\| edited) on held-out text (nats) | "
        f"{_g(loc['kl_mean'])} |",
        f"| locality: top-1 agreement on held-out text | {loc['top1_agreement']:.4%} |",
        f"| perplexity on held-out text before -> after | {loc['ppl_before']:.5g} -> "
        f"{loc['ppl_after']:.5g} |",
        f"| certified eps of block {report['block']} (drift on {c['n_tokens']} held-out tokens) "
        f"| {_g(c['eps_max'], 6)} (rel max {c['eps_rel_max']:.3%}) |",
        f"| Lipschitz of the edited block (sound / empirical) | {_g(c['lipschitz']['sound'])} / "
        f"{_g(c['lipschitz']['empirical'])} |",
        f"| budget | {_g(b['budget'])} (scale {b['scale']:.4g} of the closed-form update; "
        f"success needs scale >= {b['min_success_scale']:.4g}, eps >= "
        f"{_g(b['min_success_eps'])}) |",
    ]
    cert = report.get("certify")
    if cert:
        lines += [
            f"| global bound B_L ({cert['bound_kind']}) | {_g(cert['global_bound'], 6)} |",
            f"| observed max drift at the output | {_g(cert['observed_drift'], 6)} "
            f"(bound/observed {_g(cert['bound_over_observed'])}) |",
            f"| certify.py: KL / top-1 / ppl | {_g(cert['kl_mean'])} / "
            f"{cert['top1_agreement']:.4%} / {cert['ppl_stitched']:.5g} |",
        ]
    lines += [
        "",
        f"Timing: local re-certification {t['local_recert_s']:.3g} s (held-out capture "
        f"{t['capture_heldout_s']:.3g} s + certify_block {t['certify_block_s']:.3g} s); "
        f"re-certifying every block, estimated: {t['all_blocks_recert_estimate_s']:.3g} s.",
    ]
    if cert:
        lines[-1] += f" certify.py: {cert['seconds']:.3g} s."
    lines += _query_table("Efficacy", report["efficacy"])
    lines += _query_table("Generalisation (paraphrases)", report["generalisation"])
    lines += _query_table(
        "Specificity (neighbourhood prompts; P of the new target)", report["neighborhood"]
    )
    lines += [
        "",
        "## Trade-off: scale of the update vs certified drift",
        "",
        "| scale | eps upper | P(target) edit prompt | P(target) paraphrases | success |",
        "|---|---|---|---|---|",
    ]
    for r in report["tradeoff"]:
        lines.append(
            f"| {r['scale']:.4g} | {_g(r['eps_upper'])} | {_g(r['efficacy_prob'])} "
            f"| {_g(r['generalisation_prob'])} | {r['success']} |"
        )
    return "\n".join(lines) + "\n"


def _mean_prob(rows: list[dict], when: str) -> float | None:
    return sum(r[when]["prob"] for r in rows) / len(rows) if rows else None


def plot_tradeoff(report: dict, path: Path) -> Path:
    rows, b = report["tradeoff"], report["budget"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    eps = [r["eps_upper"] for r in rows]
    left.plot(eps, [r["efficacy_prob"] for r in rows], "o-", label="edit prompt")
    if any(r["generalisation_prob"] is not None for r in rows):
        left.plot(eps, [r["generalisation_prob"] for r in rows], "s--", label="paraphrases")
    if b["budget"] is not None:
        left.axvline(b["budget"], color="red", linestyle=":", label="budget")
    left.axvline(report["certificate"]["eps_max"], color="green", label="certified eps")
    left.set(xlabel=f"eps of block {report['block']} (upper bound)", ylabel="P(target)")
    left.set_title("efficacy vs certified drift")
    left.legend()
    groups = [("edit", report["efficacy"]), ("paraphrase", report["generalisation"])]
    labels, before, after = [], [], []
    for name, items in groups:
        for i, r in enumerate(items):
            labels.append(f"{name} {i}")
            before.append(r["before"]["prob"])
            after.append(r["after"]["prob"])
    xs = range(len(labels))
    right.bar([x - 0.2 for x in xs], before, width=0.4, label="before")
    right.bar([x + 0.2 for x in xs], after, width=0.4, label="after")
    right.set_xticks(list(xs), labels, rotation=30, ha="right")
    right.set(ylabel="P(target)", title="target probability before / after")
    right.legend()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def write_edit_report(report: dict, run_dir: Path) -> list[Path]:
    run_dir = Path(run_dir)
    text = json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n"
    return [
        write_text_atomic(run_dir / REPORT_FILE, text),
        write_text_atomic(run_dir / MARKDOWN_FILE, render_markdown(report)),
        plot_tradeoff(report, run_dir / PLOT_FILE),
    ]


def log_edit_to_wandb(
    report: dict, files: list[Path], run_dir: Path, project: str, mode: str
) -> None:
    """Summary, trade-off table and one artifact: the report and the certified edited block."""
    from blockcert.tracking import log_files

    summary = {
        "edit/success": report["success"],
        "edit/efficacy_after": _mean_prob(report["efficacy"], "after"),
        "edit/kl_mean": report["locality"]["kl_mean"],
        "edit/top1_agreement": report["locality"]["top1_agreement"],
        "cert/eps_max": report["certificate"]["eps_max"],
        "edit/scale": report["budget"]["scale"],
    }
    if report.get("certify"):
        summary["bound/claimed"] = report["certify"]["global_bound"]
        summary["observed/max"] = report["certify"]["observed_drift"]
    columns = ["scale", "eps_upper", "efficacy_prob", "generalisation_prob", "success"]
    rows = [[r[c] for c in columns] for r in report["tradeoff"]]
    block = ["certificate.json", "surrogate.json", "surrogate.safetensors"]
    log_files(
        f"edit-{report['model']['name']}-block{report['block']}",
        "edit",
        [*files, *(Path(run_dir) / name for name in block)],
        summary={k: v for k, v in summary.items() if v is not None},
        project=project,
        mode=mode,
        tables={"edit/tradeoff": (columns, rows)},
        metadata={"certificate_sha256": report["certificate"]["sha256"]},
    )
