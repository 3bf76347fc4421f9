"""certify_report.html: the whole certify report as one self-contained page.

Everything the markdown report shows, and more: the summary sentences and key figures, the
guarantee statements, the per-block table (eps_k, coverage, L_k sound / empirical, a_k, B_k,
observed e_k), the bound chain against the observed deviation as an inline SVG, ppl / KL /
top-1, the verifier's prompt set and the fresh-prompt statistics, Lean's status, the stage
timings and relative links to every artifact. No script, no network: the plots are inline SVG
or base64 PNG, the style sheet is inline. Report values are untrusted (they come from
certificates) and are escaped through html_parts.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

from blockcert.atomic import write_text_atomic
from blockcert.evaluate.html_chart import chain_figure
from blockcert.evaluate.html_parts import (
    CSS,
    NOT_COMPUTED,
    Markup,
    esc,
    join,
    key_values,
    num,
    pct,
    section,
    symbols,
    table,
    tag,
    void,
)
from blockcert.evaluate.html_prompts import (
    own_split_section,
    prompt_set_section,
    statistics_section,
)

HTML_NAME = "certify_report.html"
# the PNGs worth a look on the page; bound_growth.png is the SVG chain plot's twin
INLINE_FIGURES = {
    "per_block_eps_coverage.png": "eps_k and prompt-level coverage per certified block",
    "token_error_histogram.png": "final deviation ||h~_L - h_L|| per held-out token",
}


def _badge(status: str) -> Markup:
    kind = (status.split() or ["none"])[0].lower()  # checked / skipped / failed ... colour it
    return tag("span", status, class_=f"badge {kind}")


def _summary_sentences(report: dict) -> list[str]:
    s, out, lean = report["stitched"], report["bound"], report["lean"]
    return [
        f"Certified blocks: {report['certified_blocks']} of {report['num_blocks']}; held-out "
        f"prompts: {report['data']['n_prompts']} ({report['data']['n_tokens']} tokens).",
        f"Global bound B_L = {num(out['claimed'], 'unbounded')} on {out['prompts']} (sound in "
        "exact arithmetic, measured fp32 allowance inside every eps_k); observed max deviation "
        f"there {num(out['observed'])}; bound/observed = {num(out['tightness'], 'n/a')}; on all "
        f"held-out prompts {num(s['observed_final_max'])}.",
        f"Empirical chain (lower-estimate constants, for comparison): {num(out['empirical'])}.",
        f"Lean: {lean['status']} — {lean['message']}",
        f"Perplexity baseline {s['ppl_baseline']:.6f}, stitched {s['ppl_stitched']:.6f}, delta "
        f"{num(s['ppl_delta'], digits=3)}; mean KL {num(s['kl_mean'], digits=3)} nats; top-1 "
        f"agreement {pct(s['top1_agreement'])}.",
    ]


def _card(label: str, value: str) -> Markup:
    return tag(
        "div",
        join([tag("div", symbols(label), class_="label"), tag("div", value, class_="value")]),
        class_="card",
    )


def _summary(report: dict) -> Markup:
    s, out = report["stitched"], report["bound"]
    cards = [
        (f"B_L ({out['kind']})", num(out["claimed"], "unbounded")),
        ("observed e_L", num(out["observed"])),
        ("bound / observed", num(out["tightness"], "n/a")),
        ("B_L empirical", num(out["empirical"])),
        ("perplexity delta", num(s["ppl_delta"], digits=3)),
        ("mean KL (nats)", num(s["kl_mean"], digits=3)),
        ("top-1 agreement", pct(s["top1_agreement"])),
        ("Lean", report["lean"]["status"]),
    ]
    sentences = join(tag("p", line, class_="sentence") for line in _summary_sentences(report))
    return section(
        "summary", "Summary", sentences, tag("div", join(_card(*c) for c in cards), class_="cards")
    )


def _alerts(report: dict) -> Markup:
    parts = [
        tag("div", f"BUG: {v} (the sound bound must hold)", class_="alert violation")
        for v in report.get("violations", [])
    ]
    parts += [tag("div", f"Finding: {f}", class_="alert finding") for f in report["findings"]]
    return join(parts)


def _statements(report: dict) -> Markup:
    out, data, lean = report["bound"], report["data"], report["lean"]
    items = [
        f"Global bound ({out['kind']}): B_L = {out['claimed_rational']} "
        f"(≈ {num(out['claimed'], 'unbounded')}) on {out['prompts']}; {out['arithmetic']}.",
        f"Verification {report['verification']['status']}: every claim of every certificate was "
        f"recomputed from the teacher ({report['verification']['tolerance']}).",
        f"Held-out data (sha256 {data['sha256']}): {data['split']}.",
        f"Certificate selection: {report['selection']}.",
        f"Lean: {lean['status']} — {lean['message'].rstrip('.')}.",
    ]
    stats = report.get("statistics")
    if stats:
        items.append(f"Fresh prompts: {stats['statement']['statement']}.")
        items.append(f"Scope: {stats['note']}.")
    lis = join(tag("li", item, class_="statement") for item in items)
    return section("guarantees", "Guarantee statements", tag("ul", lis, class_="statements"))


def _first_prompt_coverage(row: dict) -> str:
    hits = [
        c
        for c in (row.get("recomputed") or {}).get("coverage", [])
        if c["kind"] == "abs" and c["unit"] == "prompt"
    ]
    return f"{hits[0]['fraction']:.2%} @ {hits[0]['tau']:g}" if hits else "n/a (teacher)"


def _lipschitz_sound(row: dict) -> str:
    if row["lipschitz_sound"] is not None:
        return num(row["lipschitz_sound"])
    return f"{NOT_COMPUTED} (B + a)" if row["lipschitz_sound_saturated"] else "unbounded"


def _blocks(report: dict) -> Markup:
    headers = [
        "block",
        "certificate",
        "eps measured",
        "fp32 allowance (h, s)",
        "eps_k composed",
        "coverage (prompts) @ tau",
        "L_k sound",
        "a_k",
        "step",
        "L_k empirical",
        "B_k sound",
        "B_k empirical",
        "observed e_k",
    ]
    rows, attrs = [], []
    for b in report["blocks"]:
        rows.append(
            [
                b["block"],
                "yes" if b["certified"] else "teacher",
                num(b["eps_measured"]),
                f"{num(b['fp_allowance_centre'])}, {num(b['fp_allowance_stitched'])}",
                num(b["eps"]),
                _first_prompt_coverage(b),
                _lipschitz_sound(b),
                num(b["saturation"]),
                b["step"],
                num(b["lipschitz_empirical"]),
                num(b["bound_sound"], "unbounded"),
                num(b["bound_empirical"]),
                num(b["observed"]),
            ]
        )
        bound = b["bound_sound"]
        broken = bound is not None and b["observed"] > float(bound)
        kind = "violation" if broken else ("certified" if b["certified"] else "teacher")
        attrs.append({"class_": f"block-row {kind}", "data_block": b["block"]})
    note = tag(
        "p",
        symbols(
            "e_k <= L_k e_{k-1} + eps_k, saturated by B_{k-1} + a_k: B_k = min(L_k B_{k-1}, "
            "B_{k-1} + a_k) + eps_k. Observed e_k: max over the bound's prompts. Teacher rows "
            "are uncertified blocks inside the chain (g_k = f_k, eps_k = fp32 allowance only). "
            "L_k not computed (B + a): the step saturates, B_k = B_{k-1} + a_k + eps_k."
        ),
        class_="note",
    )
    grid = tag("div", table(headers, rows, "blocks", attrs, text_columns=2), class_="wide")
    return section("per-block", "Per block", note, grid, chain_figure(report["blocks"]))


def _coverage_cells(c: dict | None) -> list[str]:
    if c is None:
        return ["n/a"] * 3
    miss = f"{pct(c['miss_rate_upper'])} ({1 - c['delta']:.0%})"
    return [f"{c['covered']} / {c['n']}", pct(c["fraction"]), miss]


def _coverage(report: dict) -> Markup:
    """One row per (block, kind, tau): the token-level and prompt-level counts side by side."""
    grouped: dict[tuple, dict[str, dict]] = {}
    for b in report["blocks"]:
        for c in (b.get("recomputed") or {}).get("coverage", []):
            grouped.setdefault((b["block"], c["kind"], c["tau"]), {})[c.get("unit", "token")] = c
    rows = [
        [
            block,
            kind,
            f"{tau:g}",
            *_coverage_cells(units.get("token")),
            *_coverage_cells(units.get("prompt")),
        ]
        for (block, kind, tau), units in grouped.items()
    ]
    headers = [
        "block",
        "kind",
        "tau",
        "tokens covered / n",
        "token fraction",
        "token miss rate <=",
        "prompts covered / n",
        "prompt fraction",
        "prompt miss rate <= (1 - delta)",
    ]
    note = tag(
        "p",
        "Prompt-level Clopper-Pearson bounds treat prompts as the i.i.d. draws; the token-level "
        "figure is descriptive (tokens of one prompt are correlated). kind abs: ||error|| <= tau; "
        "rel: ||error|| <= tau ||target||.",
        class_="note",
    )
    details = tag(
        "details",
        join(
            [tag("summary", f"{len(rows)} rows"), table(headers, rows, "coverage", text_columns=2)]
        ),
        open="open" if len(rows) <= 40 else None,
    )
    return section("coverage", "Coverage (recomputed)", note, details)


def _stitched(report: dict) -> Markup:
    s = report["stitched"]
    pairs = [
        ("perplexity baseline", f"{s['ppl_baseline']:.6f}"),
        ("perplexity stitched", f"{s['ppl_stitched']:.6f}"),
        ("perplexity delta", num(s["ppl_delta"], digits=3)),
        ("mean KL (nats)", num(s["kl_mean"], digits=3)),
        ("top-1 agreement", pct(s["top1_agreement"])),
        ("tokens scored", s["n_tokens"]),
        ("observed final deviation, max", num(s["observed_final_max"])),
        ("observed final deviation, mean", num(s["observed_final_mean"])),
    ]
    return section("stitched", "Stitched model on the held-out prompts", key_values(pairs))


def _figures(figures: Mapping[str, bytes]) -> Markup:
    if not figures:
        return Markup("")
    parts = []
    for caption, png in figures.items():
        src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        img = void("img", src=src, alt=caption)
        parts.append(tag("figure", join([img, tag("figcaption", caption)])))
    return section("figures", "Figures", *parts)


def _lean(report: dict, artifacts: Mapping[str, str]) -> Markup:
    lean = report["lean"]
    href = artifacts.get("Lean instance")
    file = tag("a", lean.get("file"), href=href) if href else lean.get("file") or NOT_COMPUTED
    pairs = [
        ("status", _badge(lean["status"])),
        ("message", lean["message"]),
        ("toolchain", lean.get("toolchain") or NOT_COMPUTED),
        ("instance", file),
    ]
    return section("lean", "Lean", key_values(pairs, "lean-status"))


def _timing(report: dict) -> Markup:
    timing = report.get("timing_s")
    if not timing:
        return Markup("")
    pairs = [(stage, f"{seconds:.2f} s") for stage, seconds in timing.items()]
    pairs.append(("total", f"{sum(timing.values()):.2f} s"))
    return section("timing", "Stage timings", key_values(pairs))


def _artifacts(artifacts: Mapping[str, str]) -> Markup:
    rows = [
        [tag("a", label, href=href, class_="artifact"), tag("code", href)]
        for label, href in artifacts.items()
    ]
    note = tag("p", "Links are relative to this page's folder.", class_="note")
    table_ = table(["artifact", "path"], rows, "artifacts-table", text_columns=2)
    return section("artifacts", "Artifacts", note, table_)


def _header(report: dict) -> Markup:
    m = report["model"]
    meta = " · ".join(
        f"{key} {m[key]}" for key in ("source", "family", "dtype", "sha256") if m.get(key)
    )
    links = [
        ("summary", "Summary"),
        ("guarantees", "Guarantees"),
        ("per-block", "Per block"),
        ("stitched", "Stitched"),
        ("prompts", "Prompt set"),
        ("own-split", "Verifier's prompts"),
        ("statistics", "Statistics"),
        ("lean", "Lean"),
        ("artifacts", "Artifacts"),
    ]
    optional = {"prompts": "prompts", "own-split": "own_split", "statistics": "statistics"}
    present = [(i, t) for i, t in links if i not in optional or report.get(optional[i])]
    nav = tag("nav", join(tag("a", t, href=f"#{i}") for i, t in present))
    title = tag("h1", f"BlockCert report: {m['name']}")
    return tag("header", join([title, tag("p", meta, class_="meta"), nav]))


def render_html(
    report: dict, artifacts: Mapping[str, str], figures: Mapping[str, bytes] | None = None
) -> str:
    """The page. artifacts: label -> href relative to the page; figures: caption -> PNG bytes."""
    body = [
        _header(report),
        _alerts(report),
        _summary(report),
        _statements(report),
        _blocks(report),
        _coverage(report),
        _stitched(report),
        prompt_set_section(report["prompts"]) if "prompts" in report else "",
        own_split_section(report["own_split"]) if report.get("own_split") else "",
        statistics_section(report["statistics"]) if report.get("statistics") else "",
        _figures(figures or {}),
        _lean(report, artifacts),
        _timing(report),
        _artifacts(artifacts),
    ]
    title = esc(f"BlockCert report: {report['model']['name']}")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{CSS}</style></head>"
        f"<body><main>{join(body)}</main></body></html>\n"
    )


def _href(path: str | Path, out: Path) -> str:
    """A link relative to the page's folder, percent-encoded (so no path can be a scheme)."""
    return quote(os.path.relpath(Path(path).resolve(), out.resolve()).replace(os.sep, "/"))


def artifact_links(report: dict, out: Path, written: Sequence[Path]) -> dict[str, str]:
    """label -> relative href of every file certify wrote or read: report, plots, certificates."""
    links = {path.name: _href(path, out) for path in written}
    for block, path in sorted(report["certificates"].items(), key=lambda kv: int(kv[0])):
        links[f"certificate, block {block}"] = _href(path, out)
        links[f"certificate folder, block {block}"] = _href(Path(path).parent, out) + "/"
    if report["lean"].get("file"):
        links["Lean instance"] = _href(report["lean"]["file"], out)
    return links


def write_html(report: dict, out: Path, written: Sequence[Path]) -> Path:
    """Write certify_report.html beside the files in `written`, atomically."""
    links = artifact_links(report, out, written)
    figures = {
        caption: path.read_bytes()
        for name, caption in INLINE_FIGURES.items()
        for path in written
        if path.name == name
    }
    return write_text_atomic(out / HTML_NAME, render_html(report, links, figures))
