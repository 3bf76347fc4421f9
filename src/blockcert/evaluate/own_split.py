"""The verifier's own held-out prompts: eps_k measured on prompts the certificate's author did
not choose.

The author writes the recipe (corpus, seed, sizes), so a held-out split could be the luckiest
of many seeds. certify.py therefore also draws prompts itself (the `own` split of
evaluate/fresh_prompts.py: a corpus and a seed the verifier chooses; with the recipe's corpus,
its pool minus every training and held-out prompt, at the recipe's prompt length). For each
certified block it measures each prompt's max error on teacher inputs.

Exchangeability test. With the recipe's corpus, the verifier's m prompts and the n held-out
prompts are draws from one pool, so for a fair split the number J of verifier prompts whose
error exceeds the certified eps_max (the max over the n held-out prompts) satisfies
    P(J >= j) = C(m, j) / C(n + m, j)
(the top j of n + m exchangeable values all fall on verifier prompts; ties only lower J).
Rank test. The same exchangeability makes the held-out prompts' own maxima (re-derived by
the verifier) and the fresh prompts' a random split of one sample, so a one-sided Mann-Whitney
U test (fresh larger) detects a held-out split chosen for low errors even where no fresh prompt
passes eps_max.

A block is flagged when either p-value is below verifier.alpha / (2 K) for K certified blocks
(Bonferroni over both tests and every block): an honest run is flagged anywhere with
probability <= alpha. On another corpus the figures measure a shift and no test is made.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from scipy.stats import mannwhitneyu

from blockcert.errors import BlockCertError
from blockcert.evaluate.fresh_prompts import FreshDraw


def exceedance_p_value(n_heldout: int, m: int, exceed: int) -> float:
    """P(J >= exceed) = C(m, j) / C(n + m, j) for exchangeable prompts (see the docstring)."""
    p = 1.0
    for i in range(exceed):
        p *= (m - i) / (n_heldout + m - i)
    return p


def rank_p_value(heldout: torch.Tensor, fresh: torch.Tensor) -> float:
    """One-sided Mann-Whitney U p-value that fresh per-prompt errors are stochastically larger
    than held-out ones (exact without ties, else the tie-corrected normal approximation)."""
    if float(torch.cat([heldout, fresh]).max()) == float(torch.cat([heldout, fresh]).min()):
        return 1.0  # every prompt alike (e.g. an exact surrogate): nothing to rank
    return float(mannwhitneyu(fresh.double(), heldout.double(), alternative="greater").pvalue)


def own_split_section(
    options: Mapping,
    draw: FreshDraw,
    errors: Mapping[int, torch.Tensor],
    heldout_errors: Mapping[int, torch.Tensor],
    certificates: Mapping[int, dict],
    recipe: dict,
) -> tuple[dict, list[str]]:
    """(report section, findings) for the verifier's own prompts (draw.splits["own"]);
    errors[k]: their eps_k on teacher inputs; heldout_errors[k]: the re-derived per-prompt
    maxima of the held-out prompts."""
    m, alpha = len(draw.splits["own"]), options["alpha"]
    level = alpha / (2 * len(errors))  # Bonferroni: two tests per block, every block
    rows, findings = [], []
    for k, err in errors.items():
        claimed = certificates[k]["metrics"]["eps_max"]
        n = certificates[k]["metrics"]["n_prompts"]
        exceed = int((err > claimed).sum())
        p_exceed = exceedance_p_value(n, m, exceed) if draw.exchangeable else None
        p_rank = rank_p_value(heldout_errors[k], err) if draw.exchangeable else None
        flagged = draw.exchangeable and min(p_exceed, p_rank) < level
        measured = float(err.max())
        rows.append(
            {
                "block": k,
                "eps_certificate": claimed,
                "eps_verifier": measured,
                "ratio": measured / claimed if claimed > 0 else None,
                "n_exceed": exceed,
                "p_exceed": p_exceed,
                "p_rank": p_rank,
                "flagged": flagged,
            }
        )
        if flagged:
            findings.append(
                f"block {k}: the held-out split does not behave like a fair draw: {exceed} of "
                f"the verifier's {m} fresh prompts exceed the certified eps_max {claimed:.6g} "
                f"(largest {measured:.6g}; p = {p_exceed:.2g}), rank test p = {p_rank:.2g}; "
                f"flagged below {level:.2g} (alpha {alpha:g} over 2 x {len(errors)} tests)"
            )
    section = {
        "recipe": recipe,
        "corpus": draw.corpus,
        "seed": draw.seed,
        "n_prompts": m,
        "pool": draw.pool,
        "sha256": draw.sha256("own"),
        "exchangeable": draw.exchangeable,
        "alpha": alpha,
        "test": "exceedance P(J >= j) = C(m, j) / C(n + m, j) of the J fresh prompts above "
        "eps_max, and a one-sided Mann-Whitney U test of per-prompt maxima (fresh larger), "
        f"each at alpha / (2 K) = {level:.3g} for exchangeable held-out and fresh prompts"
        if draw.exchangeable
        else "none: another corpus than the recipe's (a shift, not a test)",
        "blocks": rows,
    }
    return section, findings


def own_split_lines(section: dict) -> list[str]:
    blocks = section["blocks"]
    ratios = [r["ratio"] for r in blocks if r["ratio"] is not None]
    largest = f"largest eps ratio {max(ratios):.3g}" if ratios else "eps 0 claimed"
    flagged = [str(r["block"]) for r in blocks if r["flagged"]]
    verdict = (
        f"FLAGGED on block(s) {', '.join(flagged)}"
        if flagged
        else ("within chance on every block" if section["exchangeable"] else "no test (shift)")
    )
    return [
        f"verifier's own prompts: {section['n_prompts']} from {section['corpus']}, seed "
        f"{section['seed']}: {largest}; {verdict}"
    ]


def check_own_options(options: Mapping) -> None:
    """verifier.* as one-line errors before the model loads."""
    m, alpha, seed = options.get("n_prompts"), options.get("alpha"), options.get("seed")
    if isinstance(m, bool) or not isinstance(m, int) or m < 0:
        raise BlockCertError(f"verifier.n_prompts={m!r}: give a whole number >= 0 (0: off).")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise BlockCertError(f"verifier.alpha={alpha!r}: give a number in (0, 1).")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise BlockCertError(f"verifier.seed={seed!r}: give a whole number >= 0 or null.")
