"""certify_report.json / .md / .html and plots, written atomically into the output directory."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from blockcert.atomic import write_atomic, write_text_atomic  # noqa: E402
from blockcert.evaluate.html_report import write_html  # noqa: E402

REPORT_SCHEMA_VERSION = 1


NOT_COMPUTED = "not computed"  # the empirical chain with lipschitz.empirical_prompts=0


def _fmt(value, missing: str = "unbounded") -> str:
    if value is None:
        return missing
    return f"{float(value):.4g}"


def render_markdown(report: dict) -> str:
    s, out = report["stitched"], report["bound"]
    lines = [
        f"# BlockCert report: {report['model']['name']}",
        "",
        f"Certified blocks: {report['certified_blocks']} of {report['num_blocks']}; "
        f"held-out prompts: {report['data']['n_prompts']} ({report['data']['n_tokens']} tokens).",
        "",
        f"**Global bound** B_L = {_fmt(out['claimed'])} on {out['prompts']} (sound in exact "
        f"arithmetic, measured fp32 allowance inside every eps_k); observed max deviation there "
        f"{out['observed']:.4g}; bound/observed = {_fmt(out['tightness'])}; on all held-out "
        f"prompts {s['observed_final_max']:.4g}.",
        "Empirical chain (lower-estimate constants, for comparison): "
        f"{_fmt(out['empirical'], NOT_COMPUTED)}.",
        f"**Lean**: {report['lean']['status']} — {report['lean']['message']}",
        "",
        f"Perplexity baseline {s['ppl_baseline']:.6f}, stitched {s['ppl_stitched']:.6f}, "
        f"delta {s['ppl_delta']:.3g}; mean KL {s['kl_mean']:.3g} nats; top-1 agreement "
        f"{s['top1_agreement']:.4%}.",
    ]
    if report["findings"]:
        lines += ["", "## Findings", ""] + [f"- {f}" for f in report["findings"]]
    lines += [
        "",
        "| block | certified | eps measured | fp32 allowance (h, s) | eps_k composed | L_k sound "
        "| a_k | step | L_k empirical | B_k sound | B_k empirical "
        "| observed e_k (bound's prompts) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in report["blocks"]:
        lines.append(
            f"| {b['block']} | {'yes' if b['certified'] else 'teacher'} "
            f"| {_fmt(b['eps_measured'])} "
            f"| {_fmt(b['fp_allowance_centre'])}, {_fmt(b['fp_allowance_stitched'])} "
            f"| {_fmt(b['eps'])} | {_fmt(b['lipschitz_sound'])} | {_fmt(b['saturation'])} "
            f"| {b['step']} | {_fmt(b['lipschitz_empirical'], NOT_COMPUTED)} "
            f"| {_fmt(b['bound_sound'])} | {_fmt(b['bound_empirical'], NOT_COMPUTED)} "
            f"| {b['observed']:.4g} |"
        )
    lines += _coverage_lines(report)
    lines += _own_split_lines(report.get("own_split"))
    if "prompts" in report:
        table = report["prompts"]["table"]
        lines += ["", f"## Certificate prompts vs your prompts ({report['prompts']['name']})", ""]
        lines += ["```", *table, "```"]
    if report.get("statistics"):
        from blockcert.evaluate.fresh_stage import statistics_lines

        lines += ["", "## Fresh prompts (statistical, under the i.i.d. assumption)", ""]
        lines += [f"- {line.strip()}" for line in statistics_lines(report["statistics"])[1:]]
    lines += ["", f"Recomputation tolerance: {report['verification']['tolerance']}."]
    return "\n".join(lines) + "\n"


def _own_split_lines(own: dict | None) -> list[str]:
    """The verifier's own fresh prompts against each certificate's eps_max."""
    if not own:
        return []
    lines = [
        "",
        f"## The verifier's own prompts ({own['n_prompts']} from {own['corpus']}, "
        f"seed {own['seed']})",
        "",
        f"Test: {own['test']}.",
        "",
        "| block | eps certified | eps on these prompts | ratio | prompts above | p exceed "
        "| p rank | flagged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in own["blocks"]:
        lines.append(
            f"| {r['block']} | {_fmt(r['eps_certificate'])} | {_fmt(r['eps_verifier'])} "
            f"| {_fmt(r['ratio'], 'n/a')} | {r['n_exceed']} | {_fmt(r['p_exceed'], 'n/a')} "
            f"| {_fmt(r['p_rank'], 'n/a')} | {'YES' if r['flagged'] else 'no'} |"
        )
    return lines


def _coverage_lines(report: dict) -> list[str]:
    """Re-derived coverage of every certified block, per prompt and per token."""
    lines = [
        "",
        "## Coverage (recomputed)",
        "",
        "Prompt-level Clopper-Pearson bounds treat prompts as the i.i.d. draws; the token-level "
        "figure is descriptive (tokens of one prompt are correlated).",
        "",
        "| block | kind | unit | tau | covered / n | fraction | miss rate upper (1-delta) |",
        "|---|---|---|---|---|---|---|",
    ]
    for b in report["blocks"]:
        for c in (b.get("recomputed") or {}).get("coverage", []):
            lines.append(
                f"| {b['block']} | {c['kind']} | {c['unit']} | {c['tau']:g} | "
                f"{c['covered']} / {c['n']} | {c['fraction']:.4%} | "
                f"{c['miss_rate_upper']:.4%} ({1 - c['delta']:.0%}) |"
            )
    return lines


def _save_figure(fig, path: Path) -> None:
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def _first_abs_coverage(row: dict) -> float | None:
    """Prompt-level coverage at the first absolute tau, recomputed by the verifier."""
    metrics = row.get("recomputed")
    entries = [] if metrics is None else metrics["coverage"]
    hits = [c["fraction"] for c in entries if c["kind"] == "abs" and c["unit"] == "prompt"]
    return hits[0] if hits else None


def write_plots(report: dict, final_deviation, out: Path) -> list[Path]:
    blocks = report["blocks"]
    ks = [b["block"] for b in blocks]
    paths = []

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax1.bar(ks, [float(b["eps"]) for b in blocks], color="tab:blue")
    ax1.set_ylabel("eps_k (max L2 error)")
    ax1.set_yscale("symlog", linthresh=1e-6)
    covered = [_first_abs_coverage(b) for b in blocks]
    ax2.bar(ks, [c if c is not None else 0 for c in covered], color="tab:green")
    ax2.set_ylabel(f"prompt coverage @ tau={report.get('coverage_tau', 'n/a')}")
    ax2.set_xlabel("block")
    paths.append(out / "per_block_eps_coverage.png")
    _save_figure(fig, paths[-1])

    fig, ax = plt.subplots(figsize=(9, 4))
    for key, label in (("bound_sound", "B_k sound"), ("bound_empirical", "B_k empirical")):
        values = [float(b[key]) if b[key] is not None else None for b in blocks]
        pts = [(k, v) for k, v in zip(ks, values, strict=True) if v is not None and v > 0]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    observed = [(k, b["observed"]) for k, b in zip(ks, blocks, strict=True) if b["observed"] > 0]
    if observed:
        ax.plot(*zip(*observed, strict=True), marker="x", label="observed e_k")
    ax.set_yscale("log")
    ax.set_xlabel("block")
    ax.set_ylabel("deviation (L2)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    else:  # every deviation and bound is exactly zero: nothing to draw on a log axis
        ax.set_yscale("linear")
        ax.set_title("all bounds and deviations are 0")
    paths.append(out / "bound_growth.png")
    _save_figure(fig, paths[-1])

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(final_deviation.numpy(), bins=60, color="tab:purple")
    ax.set_xlabel("||h~_L - h_L|| per token")
    ax.set_ylabel("tokens")
    paths.append(out / "token_error_histogram.png")
    _save_figure(fig, paths[-1])
    return paths


def write_report(report: dict, final_deviation, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    report = {"schema_version": REPORT_SCHEMA_VERSION, **report}
    files = [
        write_text_atomic(out / "certify_report.json", json.dumps(report, indent=2) + "\n"),
        write_text_atomic(out / "certify_report.md", render_markdown(report)),
    ]
    files += write_plots(report, final_deviation, out)
    # last: the page embeds the plots and links every file above
    return files + [write_html(report, out, files)]
