"""certify's report: every figure recomputed, as a dict (certify_report.json), the terminal
summary and W&B.

`build_report` takes the stages' results (blockcert.certify) and never recomputes anything the
stages did; a sound bound below the observed deviation is returned as a violation (exit 4 in
the caller). The summary lines are what a reader sees first: the bound, which step of
min(L*B, B + a) each block takes, the stitched model's figures, Lean's status.
"""

from __future__ import annotations

from fractions import Fraction

from omegaconf import DictConfig

from blockcert.cert.metrics import ErrorReport
from blockcert.certify_stages import Composition, Teacher, Verified
from blockcert.compose.bound import step_taken
from blockcert.compose.chain import Chain
from blockcert.evaluate.trajectory import StitchedResult
from blockcert.tracking import log_files
from blockcert.verify.claims import Tolerance


def bound_checks(chain: Chain, observed: list[float]) -> tuple[list[str], list[str]]:
    """(findings, violations) of observed e_k against B_k, block by block.

    Above the SOUND B_k: a violation (a bug: the theorem says it cannot happen). Above the
    EMPIRICAL B_k (where computed): a finding (an empirical constant underestimated the true one).
    """
    findings, violations = [], []
    for link in chain.links:
        seen = observed[link.block]
        for bound, out, kind in (
            (link.bound_sound, violations, "sound"),
            (link.bound_empirical, findings, "empirical"),
        ):
            if bound is not None and seen > float(bound):
                out.append(
                    f"block {link.block}: observed deviation {seen:.6g} exceeds {kind} "
                    f"B_k = {float(bound):.6g}"
                )
    return findings, violations


def _float_or_none(value) -> float | None:
    return None if value is None else float(value)


def _coverage_rows(report: ErrorReport) -> list[dict]:
    return [c.to_dict() for c in report.coverage]


def _block_rows(
    composition: Composition, observed: list[float], reports: dict[int, ErrorReport]
) -> list[dict]:
    rows, prev = [], Fraction(0)
    for link in composition.chain.links:
        metrics = reports.get(link.block)
        step = step_taken(prev, link.lipschitz_sound, link.saturation)
        prev = link.bound_sound
        rows.append(
            {
                "block": link.block,
                "certified": link.certified,
                "eps": float(link.eps),  # recomputed eps_k + fp32 allowance, rounded up
                "eps_rational": str(link.eps),
                "eps_measured": 0.0 if metrics is None else metrics.eps_max,
                "fp_allowance_centre": composition.fp_allowance[link.block].centre,
                "fp_allowance_stitched": composition.fp_allowance[link.block].stitched,
                "saturation": float(link.saturation),
                "lipschitz_sound": None
                if link.lipschitz_sound is None
                else float(link.lipschitz_sound),
                # True where the chain saturates: the step is B + a, L not computed
                "lipschitz_sound_saturated": bool(
                    link.parts.get("sound", {}).get("saturated_step", False)
                ),
                "lipschitz_empirical": _float_or_none(link.lipschitz_empirical),
                # which term of min(L*B_(k-1), B_(k-1) + a) the sound chain takes here
                "step": step,
                "bound_sound": None if link.bound_sound is None else float(link.bound_sound),
                "bound_empirical": _float_or_none(link.bound_empirical),
                "observed": observed[link.block],
                "recomputed": None if metrics is None else metrics.to_dict(),
            }
        )
    return rows


def build_report(
    teacher: Teacher,
    verified: Verified,
    reports: dict[int, ErrorReport],
    composition: Composition,
    stitched: StitchedResult,
    tolerance: Tolerance,
    cfg: DictConfig,
) -> tuple[dict, list[str]]:
    """Stage 4: the report (every figure recomputed here) and the violations of the bound."""
    # the bound covers the tubes around its first n prompts: check it there
    n = composition.n_prompts
    observed = stitched.prompt_deviation[:n].amax(0).tolist()
    final_observed = observed[-1]
    findings, violations = bound_checks(composition.chain, observed)
    chain = composition.chain
    first = reports[verified.first]
    report = {
        "model": teacher.model.describe(),
        "num_blocks": teacher.adapter.num_blocks,
        "certified_blocks": sorted(verified.blocks),
        "certificates": {str(k): str(b.path) for k, b in verified.blocks.items()},
        "selection": "per block, the last certificate.json under runs in sorted path order",
        "data": {
            "n_prompts": len(verified.heldout),
            "n_tokens": verified.heldout.numel(),
            "sha256": verified.blocks[verified.first].certificate["data"]["sha256"],
            "recipe": verified.recipe,
            "split": "rebuilt from each certificate's recipe (the author's choice of corpus, "
            "seed and sizes); equal to its token file; disjoint from the training prompts",
        },
        "verification": {"status": "passed", "tolerance": tolerance.describe()},
        "bound": {
            "kind": "sound",
            "arithmetic": "sound in exact arithmetic of the IR (exact rationals, rounded up); "
            "each composed eps_k includes the measured fp32 allowance fp(h_k) + fp(s_k)",
            "claimed": float(composition.claimed),
            "claimed_rational": str(composition.claimed),
            "sound": None if chain.final_sound is None else float(chain.final_sound),
            "empirical": _float_or_none(chain.final_empirical),
            "empirical_prompts": cfg.lipschitz.empirical_prompts,
            "targeted_tokens": cfg.lipschitz.targeted_tokens,
            "n_prompts": n,
            "tube_shells": cfg.lipschitz.tube_shells,
            "refine_tokens": cfg.lipschitz.refine_tokens,
            "joint_tokens": cfg.lipschitz.joint_tokens,
            "prompts": f"the first {n} of {len(verified.heldout)} held-out prompts (their tubes); "
            "other prompts: the statistical statements",
            "observed": final_observed,
            "tightness": float(composition.claimed) / final_observed
            if final_observed > 0
            else None,
        },
        "blocks": _block_rows(composition, observed, reports),
        "coverage": _coverage_rows(first),
        "coverage_tau": next((c.tau for c in first.coverage if c.kind == "abs"), None),
        "stitched": {
            "observed_final_max": final_observed,
            "observed_final_mean": float(stitched.final_token_deviation.mean()),
            "ppl_baseline": stitched.ppl_baseline,
            "ppl_stitched": stitched.ppl_stitched,
            "ppl_delta": stitched.ppl_delta,
            "kl_mean": stitched.kl_mean,
            "top1_agreement": stitched.top1_agreement,
            "n_tokens": stitched.n_tokens,
        },
        "findings": findings,
        "violations": violations,
    }
    return report, violations


def empirical_text(value: float | None) -> str:
    return "not computed (lipschitz.empirical_prompts=0)" if value is None else f"{value:.6g}"


def chain_steps_text(rows: list[dict]) -> str:
    """Which blocks step by L*B and which by B + a (where L is vacuous at the tube's radius)."""
    parts = []
    for step in ("L*B", "B+a"):
        blocks = [str(r["block"]) for r in rows if r["step"] == step]
        if blocks:
            parts.append(f"{step} on block(s) {', '.join(blocks)}")
    return "; ".join(parts)


def summary_lines(report: dict) -> list[str]:
    s, b = report["stitched"], report["bound"]
    rows = [
        ("certified blocks", f"{len(report['certified_blocks'])} of {report['num_blocks']}"),
        (
            f"global bound B_L ({b['kind']})",
            f"{b['claimed']:.6g} on the first {b['n_prompts']} of "
            f"{report['data']['n_prompts']} held-out prompts",
        ),
        ("sound bound", "unbounded" if b["sound"] is None else f"{b['sound']:.6g}"),
        ("chain steps", chain_steps_text(report["blocks"])),
        ("empirical bound", empirical_text(b["empirical"])),
        ("observed max deviation", f"{b['observed']:.6g} (same prompts)"),
        ("bound / observed", "n/a" if b["tightness"] is None else f"{b['tightness']:.4g}"),
        ("observed, all prompts", f"{s['observed_final_max']:.6g}"),
        ("perplexity baseline", f"{s['ppl_baseline']:.6f}"),
        ("perplexity stitched", f"{s['ppl_stitched']:.6f}"),
        ("perplexity delta", f"{s['ppl_delta']:.3g}"),
        ("mean KL (nats)", f"{s['kl_mean']:.3g}"),
        ("top-1 agreement", f"{s['top1_agreement']:.4%}"),
        ("lean", f"{report['lean']['status']}: {report['lean']['message']}"),
    ]
    recipe = report["data"]["recipe"]
    rows.insert(
        1,
        (
            "held-out split",
            f"{report['data']['n_prompts']} prompts from the recipe's corpus "
            f"{recipe['corpus']['name']} (seed {recipe['seed']}, {recipe['n_train_prompts']} "
            f"training prompts, seq_len {recipe['seq_len']}), rebuilt and checked",
        ),
    )
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines += [f"FINDING: {f}" for f in report["findings"]]
    lines.append(f"report: {report['files'][0]}")
    return lines


def log_report_to_wandb(cfg: DictConfig, report: dict) -> None:
    """The report's headline figures, the statement and the prompt table, and every file."""
    summary = {
        "bound/claimed": report["bound"]["claimed"],
        "bound/kind": report["bound"]["kind"],
        "observed/max": report["stitched"]["observed_final_max"],
        "ppl/delta": report["stitched"]["ppl_delta"],
        "kl/mean": report["stitched"]["kl_mean"],
        "top1": report["stitched"]["top1_agreement"],
        "lean": report["lean"]["status"],
    }
    stats = report.get("statistics")
    if stats:  # the statement a reader quotes, and what the untouched check split saw
        statement = stats["statement"]
        summary |= {
            "fresh/statement": statement["statement"],
            "fresh/miss_upper": statement["miss_upper"],
            "fresh/check_beyond": stats["check"]["beyond"],
            "fresh/check_n": stats["check"]["n"],
        }
        summary |= {f"fresh/threshold/{k}": v for k, v in statement["thresholds"].items()}
    tables = {}
    if "prompts" in report:
        table = report["prompts"]["table"]
        columns = [c.strip() for c in table[0].split(" | ")]
        rows = [[c.strip() for c in line.split(" | ")] for line in table[1:]]
        tables["prompts/comparison"] = (columns, rows)
        summary["prompts/ppl_delta"] = report["prompts"]["stitched"]["ppl_delta"]
    log_files(
        f"certify-report-{report['model']['name']}",
        "certify-report",
        report["files"],
        summary,
        project=cfg.wandb.project,
        mode=cfg.wandb.mode,
        tables=tables,
    )
