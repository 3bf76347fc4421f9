"""certify(cfg): verify certificates, compose the global bound, check it on the stitched model.

Order matters: every hash and every claim is verified before anything is composed (exit 3 on a
mismatch, nothing written); a sound bound below the observed deviation is a bug (exit 4, after
the report is written so that it can be inspected).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import fields
from fractions import Fraction
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from blockcert.compose.chain import Chain, compose_chain
from blockcert.compose.rational import round_up
from blockcert.errors import BlockCertError, BoundViolationError
from blockcert.evaluate.report import write_report
from blockcert.evaluate.trajectory import stitched_evaluation, teacher_trajectory
from blockcert.models.adapters import adapter_for
from blockcert.prove.lake import run_lake_build
from blockcert.prove.lean_instance import write_lean_instance
from blockcert.surrogate.extract import extract_block
from blockcert.verify.claims import Tolerance, reproduce_claims, verify_artifacts
from blockcert.verify.collect import latest_per_block

log = logging.getLogger(__name__)


def _pairs(states: list[torch.Tensor], k: int, batch_size: int):
    for start in range(0, len(states[k]), batch_size):
        rows = slice(start, start + batch_size)
        yield states[k][rows], states[k + 1][rows]


def _as_float(q: Fraction | None) -> float | None:
    return None if q is None else float(q)


def _block_rows(
    chain: Chain, observed: list[float], claims: dict, slack: dict[int, float]
) -> list[dict]:
    rows = []
    for link in chain.links:
        claim = claims.get(link.block)
        first_abs = None
        if claim is not None:
            abs_cov = [c for c in claim["coverage"] if c["kind"] == "abs"]
            first_abs = abs_cov[0]["fraction"] if abs_cov else None
        rows.append(
            {
                "block": link.block,
                "certified": link.certified,
                "eps": float(link.eps),  # measured eps_k + fp32 allowance, rounded up
                "float_slack": slack[link.block],
                "lipschitz_sound": _as_float(link.lipschitz_sound),
                "lipschitz_empirical": float(link.lipschitz_empirical),
                "bound_sound": _as_float(link.bound_sound),
                "bound_empirical": float(link.bound_empirical),
                "eps_rational": str(link.eps),
                "observed": observed[link.block],
                "coverage_first_abs": first_abs,
            }
        )
    return rows


def certify(cfg: DictConfig) -> dict:
    """Run the whole check; returns the report dict (also written under cfg.out)."""
    teacher = instantiate(cfg.model)
    adapter = adapter_for(teacher)
    runs = Path(cfg.runs) if cfg.runs else Path(cfg.runs_root) / teacher.name
    chosen = latest_per_block(runs, teacher.name)
    # 1. verify every hash before doing anything else
    verified, heldout = {}, None
    for k, (path, certificate) in chosen.items():
        if k >= adapter.num_blocks:
            raise BlockCertError(f"{path}: block {k} does not exist in {teacher.name}.")
        surrogate, ids = verify_artifacts(path, certificate, teacher.weights_sha256)
        if heldout is not None and not torch.equal(ids, heldout):
            raise BlockCertError(
                f"{path}: its held-out prompts differ from the other certificates'; compose only "
                "certificates measured on the same data (same data config and seed)."
            )
        heldout = ids
        verified[k] = (path, certificate, surrogate)
    tolerance = Tolerance(**{f.name: cfg.tolerance[f.name] for f in fields(Tolerance)})
    # 2. teacher trajectory on the held-out prompts, then reproduce every claim
    states = teacher_trajectory(adapter, heldout, cfg.batch_size)
    reports = {
        k: reproduce_claims(path, cert, surrogate, _pairs(states, k, cfg.batch_size), tolerance)
        for k, (path, cert, surrogate) in verified.items()
    }
    print(
        f"verified {len(verified)} certificate(s): hashes match, claims reproduced "
        f"({tolerance.describe()})"
    )
    # 3. Lipschitz on the composed tube and the bound (blocks without a certificate: g_k = f_k)
    # The theorem is about exact arithmetic; the stitched model runs in fp32. Each composed
    # eps_k gets an allowance for fp32 evaluation error: float_slack * max_t ||h_{k+1, t}||.
    blocks, slack = [], {}
    for k in range(adapter.num_blocks):
        slack[k] = cfg.float_slack * float(states[k + 1].norm(dim=-1).max())
        if k in verified:
            eps = max(reports[k].eps_max, verified[k][1]["metrics"]["eps_max"])
            blocks.append((k, verified[k][2], True, eps + slack[k]))
        else:
            blocks.append((k, extract_block(adapter, k), False, slack[k]))
    first = min(verified)
    lip = cfg.lipschitz
    chain = compose_chain(
        blocks[first:],
        states[first:-1],
        cfg.batch_size,
        lip.empirical_prompts,
        lip.random_trials,
        lip.ascent_steps,
        min_radius=lip.min_radius_fraction * float(states[first].norm(dim=-1).median()),
    )
    # 4. stitched model vs teacher
    surrogates = {k: v[2] for k, v in verified.items()}
    stitched = stitched_evaluation(adapter, surrogates, heldout, states, cfg.batch_size)
    observed = stitched.block_deviation
    kind = "sound" if chain.sound else "empirical"
    # claim a short decimal at or above the exact B_L; Lean re-computes B_L and checks it
    claimed = round_up(chain.final_sound if chain.sound else chain.final_empirical)
    final_observed = float(stitched.final_token_deviation.max())
    findings, violations = [], []
    for link in chain.links:
        bound = link.bound_sound if chain.sound else link.bound_empirical
        if observed[link.block] > float(bound):
            violations.append(
                f"block {link.block}: observed deviation {observed[link.block]:.6g} exceeds "
                f"B_k = {float(bound):.6g} ({kind})"
            )
    if kind == "empirical":
        findings.append(
            "the sound chain is unbounded on this tube, so the global bound uses EMPIRICAL "
            "Lipschitz constants (lower estimates): it is not certified."
        )
        findings += [f"empirical constant underestimated the true one: {v}" for v in violations]
    # 5. Lean instance and kernel check
    eps_q, lips_q = chain.lists(kind)
    # the instance is named after every certificate it composes
    digest = hashlib.sha256(
        "".join(c["certificate_sha256"] for _, c, _ in verified.values()).encode()
    ).hexdigest()
    provenance = {
        f"block {k}": f"{p} sha256={c['certificate_sha256']}" for k, (p, c, _) in verified.items()
    }
    provenance["kind"] = kind
    lean_root = Path(cfg.lean.root)
    lean_file = write_lean_instance(lean_root, digest, eps_q, lips_q, claimed, provenance)
    lean = run_lake_build(lean_root) if cfg.lean.build else None
    lean_status = (
        {"status": lean.status, "toolchain": lean.toolchain, "message": lean.message}
        if lean is not None
        else {"status": "skipped", "toolchain": None, "message": "lean.build=false"}
    )
    lean_status["file"] = str(lean_file)
    report = {
        "model": teacher.describe(),
        "num_blocks": adapter.num_blocks,
        "certified_blocks": sorted(verified),
        "certificates": {str(k): str(p) for k, (p, _, _) in verified.items()},
        "data": {
            "n_prompts": len(heldout),
            "n_tokens": heldout.numel(),
            "sha256": verified[first][1]["data"]["sha256"],
        },
        "verification": {"status": "passed", "tolerance": tolerance.describe()},
        "bound": {
            "kind": kind,
            "claimed": float(claimed),
            "claimed_rational": str(claimed),
            "sound": _as_float(chain.final_sound),
            "empirical": float(chain.final_empirical),
            "tightness": float(claimed) / final_observed if final_observed > 0 else None,
        },
        "float_slack": cfg.float_slack,
        "blocks": _block_rows(
            chain, observed, {k: c["metrics"] for k, (_, c, _) in verified.items()}, slack
        ),
        "coverage_tau": next(
            (c["tau"] for c in verified[first][1]["metrics"]["coverage"] if c["kind"] == "abs"),
            None,
        ),
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
        "lean": lean_status,
        "findings": findings,
        "violations": violations if kind == "sound" else [],
    }
    out = Path(cfg.out) if cfg.out else runs / "certify"
    files = write_report(report, stitched.final_token_deviation, out)
    report["files"] = [str(f) for f in files]
    if kind == "sound" and violations:
        raise BoundViolationError(
            "BUG: observed deviation exceeds the SOUND bound, contradicting the composition "
            f"theorem: {violations[0]} (report in {out})."
        )
    return report


def summary_table(report: dict) -> str:
    s, b = report["stitched"], report["bound"]
    rows = [
        ("certified blocks", f"{len(report['certified_blocks'])} of {report['num_blocks']}"),
        (f"global bound B_L ({b['kind']})", f"{b['claimed']:.6g}"),
        ("sound bound", "unbounded" if b["sound"] is None else f"{b['sound']:.6g}"),
        ("empirical bound", f"{b['empirical']:.6g}"),
        ("observed max deviation", f"{s['observed_final_max']:.6g}"),
        ("bound / observed", "n/a" if b["tightness"] is None else f"{b['tightness']:.4g}"),
        ("perplexity baseline", f"{s['ppl_baseline']:.6f}"),
        ("perplexity stitched", f"{s['ppl_stitched']:.6f}"),
        ("perplexity delta", f"{s['ppl_delta']:.3g}"),
        ("mean KL (nats)", f"{s['kl_mean']:.3g}"),
        ("top-1 agreement", f"{s['top1_agreement']:.4%}"),
        ("lean", f"{report['lean']['status']}: {report['lean']['message']}"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines += [f"FINDING: {f}" for f in report["findings"]]
    lines.append(f"report: {report['files'][0]}")
    return "\n".join(lines)


def log_report_to_wandb(cfg: DictConfig, report: dict) -> None:
    import wandb

    out = Path(report["files"][0]).parent
    run = wandb.init(
        project=cfg.wandb.project,
        mode=cfg.wandb.mode,
        dir=str(out),
        job_type="certify",
        name=f"certify-{report['model']['name']}",
    )
    run.summary.update(
        {
            "bound/claimed": report["bound"]["claimed"],
            "bound/kind": report["bound"]["kind"],
            "observed/max": report["stitched"]["observed_final_max"],
            "ppl/delta": report["stitched"]["ppl_delta"],
            "kl/mean": report["stitched"]["kl_mean"],
            "top1": report["stitched"]["top1_agreement"],
            "lean": report["lean"]["status"],
        }
    )
    artifact = wandb.Artifact(f"certify-report-{report['model']['name']}", type="certify-report")
    for file in report["files"]:
        artifact.add_file(file)
    run.log_artifact(artifact)
    run.finish()
