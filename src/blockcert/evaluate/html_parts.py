"""Escaped HTML building blocks for certify_report.html: numbers, tables, key-value lists.

The report carries strings from certificates (paths, model names, prompt labels), which are
untrusted input: every value goes through `esc` (html.escape, quotes included) unless it is a
`Markup` that this package built from escaped parts. Standard library only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from html import escape

NOT_COMPUTED = "not computed"


class Markup(str):
    """HTML built here from escaped parts: inserted as is."""


def esc(value) -> str:
    return value if isinstance(value, Markup) else escape(str(value), quote=True)


def symbols(text: str) -> Markup:
    """A constant label in the paper's notation: eps -> ε, tau -> τ, L^ -> L̂, x_k subscripts.

    Only for this package's own labels: a report string may hold underscores of its own.
    """
    out = re.sub(r"\beps(?![A-Za-z])", "ε", esc(text))
    out = re.sub(r"\btau(?![A-Za-z])", "τ", out).replace("L^", "L\u0302")
    out = re.sub(r"_\{([^}]*)\}", r"<sub>\1</sub>", out)
    return Markup(re.sub(r"_([A-Za-z0-9]+)", r"<sub>\1</sub>", out))


def num(value, missing: str = NOT_COMPUTED, digits: int = 4) -> str:
    """A float in `digits` significant figures; None as `missing`."""
    if value is None:
        return missing
    value = float(value)
    if math.isnan(value):
        return missing
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.{digits}g}"


def pct(value, missing: str = NOT_COMPUTED) -> str:
    return missing if value is None else f"{float(value):.4%}"


def tag(name: str, content, **attrs) -> Markup:
    """<name attrs>content</name>; attribute values escaped, `class_` for class."""
    rendered = "".join(
        f' {key.rstrip("_").replace("_", "-")}="{esc(value)}"'
        for key, value in attrs.items()
        if value is not None
    )
    return Markup(f"<{name}{rendered}>{esc(content)}</{name}>")


def void(name: str, **attrs) -> Markup:
    """<name attrs> for void elements (img); attribute values escaped."""
    return Markup(str(tag(name, "", **attrs))[: -len(f"</{name}>")])


def join(parts: Iterable) -> Markup:
    return Markup("".join(esc(p) for p in parts))


def _cell_class(cell, numeric: bool) -> str | None:
    """Numbers never wrap (Chromium breaks 7.3e-11 after the minus); phrases wrap at spaces."""
    if not numeric:
        return None
    return "num" if " " not in str(cell) else "num phrase"


def table(
    headers: Sequence,
    rows: Iterable[Sequence],
    id_: str | None = None,
    row_attrs: Sequence[Mapping] | None = None,
    text_columns: int = 1,
    notation: bool = True,
) -> Markup:
    """A table; the first `text_columns` columns left-aligned, the rest numeric (right).

    notation: headers are this package's labels, shown in the paper's symbols (`symbols`).
    """
    head = join(tag("th", symbols(h) if notation else h, scope="col") for h in headers)
    body = []
    for r, row in enumerate(rows):
        cells = join(
            tag("td", cell, class_=_cell_class(cell, c >= text_columns))
            for c, cell in enumerate(row)
        )
        attrs = row_attrs[r] if row_attrs is not None else {}
        body.append(tag("tr", cells, **attrs))
    return tag(
        "table",
        join([tag("thead", tag("tr", head)), tag("tbody", join(body))]),
        id=id_,
    )


def key_values(pairs: Iterable[tuple[str, object]], id_: str | None = None) -> Markup:
    """A two-column table of (label, value)."""
    rows = join(tag("tr", join([tag("th", k, scope="row"), tag("td", v)])) for k, v in pairs)
    return tag("table", tag("tbody", rows), id=id_, class_="kv")


def section(id_: str, title: str, *content) -> Markup:
    return tag("section", join([tag("h2", title), *content]), id=id_)


CSS = """
:root { --ink: #1b2430; --muted: #5b6775; --line: #d8dee6; --accent: #1d4e89;
  --ok: #2a7a4b; --warn: #a86200; --bad: #b3261e; --panel: #f5f7fa; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 28px 32px 64px; }
header { border-bottom: 3px solid var(--accent); margin-bottom: 20px; padding-bottom: 10px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 34px 0 10px; padding-bottom: 4px;
  border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 20px 0 8px; }
.meta, figcaption, .note { color: var(--muted); font-size: 13px; }
code, .mono { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12.5px;
  overflow-wrap: anywhere; }
nav { font-size: 13px; margin: 8px 0 0; }
nav a { margin-right: 12px; }
a { color: var(--accent); }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(165px, 1fr)); gap: 10px;
  margin: 14px 0; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 8px;
  padding: 10px 12px; }
.card .label { color: var(--muted); font-size: 13px; }
.card .value { font-size: 20px; font-weight: 600; font-variant-numeric: tabular-nums; }
.sentence { margin: 6px 0; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 13.5px; }
th, td { padding: 5px 9px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
thead th { background: var(--panel); font-weight: 600; border-bottom: 2px solid var(--line);
  vertical-align: bottom; }
tbody tr:nth-child(even) { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.num.phrase { white-space: normal; }
table.kv th { font-weight: 500; color: var(--muted); padding-right: 24px; }
.wide { overflow-x: auto; }
tr.teacher td { color: var(--muted); }
tr.violation td { background: #fdecea; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 10px; font-size: 12.5px;
  font-weight: 600; color: #fff; background: var(--muted); }
.badge.checked, .badge.passed, .badge.ok { background: var(--ok); }
.badge.failed, .badge.error, .badge.exceeded { background: var(--bad); }
.alert { border-left: 4px solid var(--bad); background: #fdecea; padding: 8px 14px;
  margin: 12px 0; }
.alert.finding { border-color: var(--warn); background: #fff4e5; }
ul.statements li { margin: 6px 0; }
figure { margin: 12px 0; }
figure svg, figure img { max-width: 100%; height: auto; border: 1px solid var(--line);
  border-radius: 6px; background: #fff; }
svg .tick { font-size: 11px; fill: #5b6775; }
svg .axis-title, svg .legend { font-size: 12px; fill: #1b2430; }
details summary { cursor: pointer; color: var(--accent); margin: 6px 0; }
"""
