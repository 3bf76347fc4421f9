"""latents.html: a transcoder's latents as one self-contained page a person can browse.

Built from the latent report (blockcert.surrogate.latents): the run's figures; every latent's
frequency and peak activation (a sortable-by-eye index, most frequent first); the histogram of
latent frequencies; then, per shown latent, its top-activating held-out contexts with each
token shaded by the latent's activation there (the marked token is the one ranked), the
histogram of its non-zero activations and its direct logit effects (labelled an approximation).
No script, no external file, no network: inline CSS and SVG, <details> to fold sections. Every
text value (corpus text, token strings, the title) is escaped (html_parts.esc).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from blockcert.atomic import write_text_atomic
from blockcert.evaluate.html_parts import CSS, Markup, esc, join, key_values, num, section, tag

LATENTS_HTML = "latents.html"
SHADE = "214, 96, 0"  # rgb of the activation shading
NEGATIVE_SHADE = "40, 110, 200"  # rgb of a signed latent's negative activations
INDEX_COLUMNS = 6  # latents per row of the index table

LATENT_CSS = """
.tokens { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12.5px;
  line-height: 1.9; white-space: pre-wrap; overflow-wrap: anywhere; }
.tok { border-radius: 3px; padding: 1px 0; }
.tok.focus { outline: 2px solid #1d4e89; }
.latent { border: 1px solid var(--line); border-radius: 8px; padding: 6px 14px; margin: 10px 0; }
.latent > summary { font-weight: 600; }
.latent-grid { display: grid; grid-template-columns: minmax(0, 3fr) minmax(260px, 1fr);
  gap: 18px; }
.ctx td.num { width: 70px; }
.logits td { padding: 2px 8px; }
table.index td { padding: 2px 8px; }
"""


def _shade(value: float, peak: float) -> str:
    """Orange by activation / peak; a signed latent's negative values in blue by |a| / peak."""
    alpha = 0.0 if peak <= 0 or value == 0 else min(1.0, abs(value) / peak)
    rgb = SHADE if value > 0 else NEGATIVE_SHADE
    return f"background: rgba({rgb}, {0.08 + 0.82 * alpha:.3f})" if alpha > 0 else ""


def _token_text(text: str) -> str:
    """Newlines and tabs visible, so that a context reads on one line."""
    return text.replace("\n", "⏎").replace("\t", "⇥") or "∅"


def _context_row(context: dict, peak: float) -> Markup:
    spans = []
    for i, token in enumerate(context["tokens"]):
        value = token["activation"]
        spans.append(
            tag(
                "span",
                _token_text(token["text"]),
                class_="tok focus" if i == context["focus"] else "tok",
                style=_shade(value, peak) or None,
                title=f"activation {value:.4g}",
            )
        )
    where = f"prompt {context['prompt']}, position {context['position']}"
    cells = [
        tag("td", num(context["activation"]), class_="num"),
        tag("td", tag("div", join(spans), class_="tokens")),
        tag("td", where, class_="note"),
    ]
    return tag("tr", join(cells))


def histogram_svg(edges: Sequence[float], counts: Sequence[int], width=260, height=120) -> Markup:
    """Bars of `counts` over the bins `edges` (len(counts) + 1), a log-free linear y axis."""
    top = max(counts) if counts else 0
    left, plot_w, plot_h = 4, width - 8, height - 26
    bar_w = plot_w / max(1, len(counts))
    bars = []
    for i, count in enumerate(counts):
        h = 0.0 if top == 0 else plot_h * count / top
        x, y = left + i * bar_w, 4 + plot_h - h
        tip = f"{edges[i]:.3g} to {edges[i + 1]:.3g}: {count} tokens"
        bars.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(bar_w - 1, 0.5):.1f}" height="{h:.1f}" '
            f'fill="#d76000"><title>{esc(tip)}</title></rect>'
        )
    axis = (
        f'<line x1="{left}" y1="{4 + plot_h}" x2="{left + plot_w}" y2="{4 + plot_h}" '
        'stroke="#5b6775"/>'
        f'<text class="tick" x="{left}" y="{height - 4}">0</text>'
        f'<text class="tick" x="{left + plot_w}" y="{height - 4}" text-anchor="end">'
        f"{esc(num(edges[-1] if edges else 0, digits=3))}</text>"
    )
    label = esc(f"histogram of non-zero activations, peak bin {top} tokens")
    return Markup(
        f'<svg role="img" aria-label="{label}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{"".join(bars)}{axis}</svg>'
    )


def _logit_table(logits: dict) -> Markup:
    rows = []
    for (up, up_value), (down, down_value) in zip(
        logits["promoted"], logits["suppressed"], strict=True
    ):
        rows.append(
            tag(
                "tr",
                join(
                    [
                        tag("td", tag("span", _token_text(up), class_="tokens")),
                        tag("td", f"{up_value:+.3g}", class_="num"),
                        tag("td", tag("span", _token_text(down), class_="tokens")),
                        tag("td", f"{down_value:+.3g}", class_="num"),
                    ]
                ),
            )
        )
    head = tag("tr", join(tag("th", h) for h in ("promoted", "", "suppressed", "")))
    return tag("table", join([tag("thead", head), tag("tbody", join(rows))]), class_="logits")


def _latent(entry: dict, report: dict, open_: bool) -> Markup:
    peak = entry["max_activation"]
    size = "|activation|" if report.get("signed") else "activation"
    summary = (
        f"latent {entry['latent']}: fires on {entry['frequency']:.3%} of held-out tokens, "
        f"max {size} {num(peak, digits=3)}, mean {size} when active "
        f"{num(entry['mean_activation'], digits=3)}"
    )
    rows = [_context_row(c, peak) for c in entry["top_contexts"]]
    contexts = tag("table", tag("tbody", join(rows)), class_="ctx")
    if entry.get("negative_contexts"):  # a signed latent: its other side, in blue
        rows = [_context_row(c, peak) for c in entry["negative_contexts"]]
        negative = tag("table", tag("tbody", join(rows)), class_="ctx")
        contexts = join(
            [tag("h3", "largest positive"), contexts, tag("h3", "most negative"), negative]
        )
    side = [
        tag("h3", "activation histogram"),
        histogram_svg(entry["histogram"]["edges"], entry["histogram"]["counts"]),
    ]
    if "logits" in entry:
        side += [
            tag("h3", "top logit effects"),
            tag("p", report.get("logit_label") or "", class_="note"),
            _logit_table(entry["logits"]),
        ]
    body = tag("div", join([tag("div", contexts), tag("div", join(side))]), class_="latent-grid")
    attrs = {"class_": "latent", "id": f"latent-{entry['latent']}"}
    if open_:
        attrs["open"] = "open"
    return tag("details", join([tag("summary", summary), body]), **attrs)


def _frequency_svg(frequencies: Sequence[float], width=720, height=160) -> Markup:
    """Histogram of log10 latent frequency (dead latents counted apart, in the caption)."""
    live = [math.log10(f) for f in frequencies if f > 0]
    if not live:
        return Markup("")
    lo, hi = math.floor(min(live)), max(0, math.ceil(max(live)))
    bins = max(1, (hi - lo) * 5)
    counts = [0] * bins
    for value in live:
        counts[min(bins - 1, int((value - lo) / (hi - lo) * bins))] += 1
    edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
    svg = histogram_svg(edges, counts, width, height)
    ticks = ", ".join(f"1e{e}" for e in range(lo, hi + 1))
    caption = (
        f"Latents by log10 of the fraction of held-out tokens they fire on (axis {ticks}); "
        f"{len(frequencies) - len(live)} latents never fire."
    )
    return tag("figure", join([svg, tag("figcaption", caption)]))


def _index(report: dict) -> Markup:
    """Every latent's frequency and peak, most frequent first; shown latents link down."""
    shown = {e["latent"] for e in report["latents"]}
    order = sorted(range(len(report["frequencies"])), key=lambda i: (-report["frequencies"][i], i))
    cells = []
    for i in order:
        label = f"#{i}"
        name = tag("a", label, href=f"#latent-{i}") if i in shown else label
        cells.append(
            join(
                [
                    tag("td", name),
                    tag("td", f"{report['frequencies'][i]:.2%}", class_="num"),
                    tag("td", num(report["max_activations"][i], digits=3), class_="num"),
                ]
            )
        )
    rows = [
        tag("tr", join(cells[i : i + INDEX_COLUMNS])) for i in range(0, len(cells), INDEX_COLUMNS)
    ]
    head = tag("tr", join(tag("th", h) for h in ("latent", "freq", "max") * INDEX_COLUMNS))
    table = tag("table", join([tag("thead", head), tag("tbody", join(rows))]), class_="index")
    return tag(
        "details",
        join([tag("summary", f"all {len(order)} latents (frequency, peak)"), table]),
    )


def _figures(report: dict, title: str) -> Markup:
    skip = " with an affine skip path" if report.get("skip") else ""
    pairs = [
        ("surrogate", f"{report.get('family', 'transcoder')}: {report['width']} latents{skip}"),
        ("k (latents kept per token)", report["k"]),
        ("mean L0 (max)", f"{report['mean_l0']:.2f} ({report['max_l0']})"),
        ("dead latents (never fire on held-out)", f"{report['dead_fraction']:.2%}"),
        ("FVU of the MLP output", num(report["fvu"])),
        ("held-out tokens (prompts)", f"{report['n_tokens']} ({report['n_prompts']})"),
    ]
    if report.get("tokens_seen") is not None:
        pairs.append(("training tokens seen", f"{report['tokens_seen']:,}"))
    return key_values(pairs)


def render_latents_html(report: dict, title: str) -> str:
    """The page (a str) for `report`; `title` names the model and block."""
    n = len(report["latents"])
    shown = (
        f"{n} latents: the most frequent, then a random sample of the other live ones, most "
        "frequent first. Each row is a held-out token where the latent is largest (outlined), "
        "with the tokens before and after it shaded by the latent's activation on them "
        "(hover for the value; the block is causal, so the latent at the outlined token saw "
        "only what precedes it)."
    )
    body = [
        tag("header", join([tag("h1", f"Transcoder latents: {title}")])),
        section("figures", "Figures", _figures(report, title)),
        section(
            "frequencies",
            "Latent frequencies",
            _frequency_svg(report["frequencies"]),
            _index(report),
        ),
        section(
            "latents",
            "Latents",
            tag("p", shown, class_="note"),
            join(_latent(e, report, open_=i < 8) for i, e in enumerate(report["latents"])),
        ),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(f'Transcoder latents: {title}')}</title>"
        f"<style>{CSS}{LATENT_CSS}</style></head>"
        f"<body><main>{join(body)}</main></body></html>\n"
    )


def write_latents_html(run_dir: str | Path, report: dict, title: str) -> Path:
    return write_text_atomic(Path(run_dir) / LATENTS_HTML, render_latents_html(report, title))
