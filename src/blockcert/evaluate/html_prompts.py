"""The HTML sections of certify's prompt stages: the verifier's prompt set (`prompts=`) and the
statistical statements about fresh prompts (`statistics:`), from evaluate.prompt_stage's report
sections. Values escaped through html_parts (prompt labels and sources are user input).
"""

from __future__ import annotations

from blockcert.evaluate.html_parts import (
    Markup,
    join,
    key_values,
    num,
    pct,
    section,
    symbols,
    table,
    tag,
)


def _comparison(lines: list[str]) -> Markup:
    """comparison_lines' text table ("a | b | c" rows, the first the header) as a table."""
    rows = [[cell.strip() for cell in line.split(" | ")] for line in lines]
    return table(rows[0], rows[1:], "prompts-comparison", notation=False)


def _prompt_blocks(blocks: list[dict]) -> Markup:
    headers = [
        "block",
        "certificate",
        "eps",
        "eps / certificate's",
        "fp32 allowance",
        "coverage @ tau (certificate's)",
        "L_k sound",
        "a_k",
        "L_k empirical",
        "B_k sound",
        "B_k empirical",
        "observed e_k",
    ]
    rows = []
    for b in blocks:
        ratio, coverage = "n/a (teacher)", "n/a (teacher)"
        if b["certified"]:
            ratio = "n/a" if b["eps_ratio"] is None else f"{b['eps_ratio']:.3g}x"
            coverage = (
                f"{pct(b['coverage'])} @ {b['tau']:g} ({pct(b['coverage_certificate'], 'n/a')})"
            )
        rows.append(
            [
                b["block"],
                "yes" if b["certified"] else "teacher",
                num(b["eps"]),
                ratio,
                num(b["fp_allowance"]),
                coverage,
                num(b["lipschitz_sound"], "unbounded"),
                num(b["saturation"]),
                num(b["lipschitz_empirical"]),
                num(b["bound_sound"], "unbounded"),
                num(b["bound_empirical"]),
                num(b["observed"]),
            ]
        )
    attrs = [{"class_": "prompt-block-row", "data_block": b["block"]} for b in blocks]
    return tag("div", table(headers, rows, "prompts-blocks", attrs, text_columns=2), class_="wide")


def _categories(categories: dict) -> Markup:
    headers = [
        "category",
        "prompts",
        "tokens",
        "observed final max",
        "ppl delta",
        "mean KL",
        "top-1",
    ]
    rows = [
        [
            label,
            c["n_prompts"],
            c["n_tokens"],
            num(c["observed_final_max"]),
            num(c["ppl_delta"], digits=3),
            num(c["kl_mean"], digits=3),
            pct(c["top1_agreement"], "n/a"),
        ]
        for label, c in categories.items()
    ]
    return table(headers, rows, "prompts-categories")


def _per_prompt(per_prompt: dict) -> Markup:
    headers = ["prompt", "tokens", "final deviation", "ppl delta", "mean KL"]
    columns = zip(
        per_prompt["label"],
        per_prompt["n_tokens"],
        per_prompt["final_deviation"],
        per_prompt["ppl_delta"],
        per_prompt["kl_mean"],
        strict=True,
    )
    rows = [
        [label, n, num(d), num(p, digits=3), num(kl, digits=3)] for label, n, d, p, kl in columns
    ]
    summary = tag("summary", f"per prompt ({len(rows)})")
    return tag("details", join([summary, table(headers, rows, "prompts-per-prompt")]))


def prompt_set_section(prompts: dict) -> Markup:
    """report["prompts"]: the certificate prompts against the verifier's own."""
    bound = prompts["bound"]
    pairs = [(f"source: {key}", value) for key, value in prompts["source"].items()]
    pairs += [
        ("sha256 (token ids)", tag("code", prompts["sha256"])),
        ("prompts / tokens", f"{prompts['n_prompts']} / {prompts['n_tokens']}"),
        ("prompts cut to the context", prompts["n_truncated"]),
        ("batching", prompts["batching"]),
        (
            f"global bound B_L ({bound['kind']})",
            f"{num(bound['final'], 'unbounded')}; bound / observed = "
            f"{num(bound['tightness'], 'n/a')}; empirical chain {num(bound['empirical'])}",
        ),
    ]
    return section(
        "prompts",
        f"Certificate prompts vs your prompts ({prompts['name']})",
        key_values(pairs),
        _comparison(prompts["table"]),
        tag("h3", "Per block on your prompts"),
        _prompt_blocks(prompts["blocks"]),
        tag("h3", "Per category"),
        _categories(prompts["categories"]),
        _per_prompt(prompts["per_prompt"]),
    )


def _verdict(within: bool, failed: str = "EXCEEDED") -> Markup:
    return (
        tag("span", "ok", class_="badge ok")
        if within
        else tag("span", failed, class_="badge exceeded")
    )


def _thresholds(statement: dict) -> Markup:
    headers = ["metric", "threshold", "scale c_i (own split)"]
    rows = [
        [name, num(statement["thresholds"][name]), num(scale)]
        for name, scale in zip(statement["metrics"], statement["scales"], strict=True)
    ]
    return table(headers, rows, "statistics-thresholds", text_columns=1)


def _check_and_shift(stats: dict) -> Markup:
    headers = ["prompts", "beyond / n", "fraction", "consistent up to", "verdict"]
    c = stats["check"]
    rows = [
        [
            "check split (covered, untouched)",
            f"{c['beyond']} / {c['n']}",
            num(c["fraction"]),
            c["allowed"],
            _verdict(c["within"]),
        ]
    ]
    for name, row in stats["shift"].items():
        rows.append(
            [
                f"{name} (NOT covered: out of distribution)",
                f"{row['beyond']} / {row['n']}",
                num(row["fraction"]),
                "—",
                "—",
            ]
        )
    return table(headers, rows, "statistics-check", text_columns=1)


def _compositional(c: dict | None) -> Markup:
    if c is None:
        return tag("p", "Compositional statement: not computed (opt-in).", class_="note")
    if not c["informative"]:
        return tag("p", symbols(f"Compositional statement: not stated ({c['why']})."))
    headers = ["block", "tau_k", "fp32 slack", "L^_k", "radius r_k = B_{k-1}", "B_k"]
    columns = zip(
        c["blocks"], c["taus"], c["slack"], c["lipschitz"], c["radii"], c["bounds"][1:], strict=True
    )
    rows = [[k, *(num(v, "unbounded") for v in values)] for k, *values in columns]
    return join(
        [
            tag("p", symbols(f"Compositional: {c['statement']}."), class_="statement"),
            table(headers, rows, "statistics-chain"),
        ]
    )


def own_split_section(own: dict) -> Markup:
    """report["own_split"]: eps per block on prompts the verifier drew, and its tests."""
    headers = [
        "block",
        "eps certified",
        "eps on these prompts",
        "ratio",
        "prompts above",
        "p exceed",
        "p rank",
        "flagged",
    ]
    rows = [
        [
            r["block"],
            num(r["eps_certificate"]),
            num(r["eps_verifier"]),
            num(r["ratio"], "n/a"),
            r["n_exceed"],
            num(r["p_exceed"], "n/a"),
            num(r["p_rank"], "n/a"),
            _verdict(not r["flagged"], "FLAGGED") if own["exchangeable"] else "—",
        ]
        for r in own["blocks"]
    ]
    note = tag(
        "p",
        f"{own['n_prompts']} prompts from {own['corpus']}, seed {own['seed']} (pool of "
        f"{own['pool']}). Test: {own['test']}.",
        class_="note",
    )
    return section(
        "own-split", "The verifier's own prompts", note, table(headers, rows, "own-split")
    )


def statistics_section(stats: dict) -> Markup:
    """report["statistics"]: the joint statement, its check split, what it does not cover."""
    statement = stats["statement"]
    parts = [
        tag("p", f"Scope: {stats['note']}.", class_="note"),
        tag("ul", tag("li", statement["statement"], class_="statement"), class_="statements"),
        _thresholds(statement),
        _check_and_shift(stats),
        _compositional(stats.get("compositional")),
    ]
    return section("statistics", "Fresh prompts (statistical, under the i.i.d. assumption)", *parts)
