"""certify(cfg): verify certificates, compose the global bound, check it on the stitched model.

Stages, each a function over small dataclasses:
  load_teacher -> verify_certificates (hashes, IR, split; exit 3) -> teacher_trajectory ->
  rederive (every claim recomputed; exit 3) -> compose (B_k per block) -> stitched evaluation ->
  build_report -> write files -> Lean instance (+ kernel check).
A sound bound below the observed deviation is a bug: exit 4, after the report is written so
that it can be inspected. Library code returns lines; the entry script prints them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from omegaconf import DictConfig

from blockcert.cert.fp_allowance import chain_allowance
from blockcert.cert.lipschitz import LipschitzOptions
from blockcert.cert.metrics import ErrorReport
from blockcert.certify_report import build_report, summary_lines
from blockcert.certify_stages import Composition, Teacher, Verified
from blockcert.compose.chain import compose_chain, input_batches
from blockcert.compose.rational import round_up
from blockcert.errors import BlockCertError, BoundViolationError
from blockcert.evaluate.fresh_stage import fresh_stage
from blockcert.evaluate.own_split import check_own_options
from blockcert.evaluate.prompt_stage import run_prompt_stages
from blockcert.evaluate.report import write_report
from blockcert.evaluate.trajectory import stitched_evaluation, teacher_trajectory
from blockcert.models.adapters import adapter_for
from blockcert.models.load import load_teacher as teacher_from_config
from blockcert.progress import progress
from blockcert.prove.checker import check_lean
from blockcert.prove.lean_instance import write_lean_instance
from blockcert.resources import lean_project
from blockcert.surrogate.extract import extract_block
from blockcert.surrogate.ir import Surrogate
from blockcert.verify.claims import (
    TeacherFacts,
    Tolerance,
    blame,
    check_split,
    rederive_claims,
    verify_artifacts,
)
from blockcert.verify.collect import certificates_per_block
from blockcert.verify.split import rebuild_split

log = logging.getLogger(__name__)


@dataclass
class CertifyResult:
    report: dict
    lines: list[str]


def load_teacher(cfg: DictConfig) -> Teacher:
    model = teacher_from_config(cfg.model)
    return Teacher(model, adapter_for(model))


def verify_certificates(cfg: DictConfig, teacher: Teacher, runs: Path) -> Verified:
    """Stage 1: hashes, IR and split of every chosen certificate; VerificationError if not."""
    chosen = certificates_per_block(runs, teacher.model.name)
    facts = TeacherFacts.of(teacher.model)
    blocks, splits = {}, []
    for k, (path, certificate) in chosen.items():
        with blame(path):
            block = verify_artifacts(path, certificate, facts)
            if blocks and not torch.equal(block.heldout, next(iter(blocks.values())).heldout):
                raise BlockCertError(
                    f"{path}: its held-out prompts differ from the other certificates'; compose "
                    "only certificates measured on the same data (same data config and seed)."
                )
            recipe = certificate["data"]["recipe"]
            rebuilt = rebuild_split(recipe, teacher.model.tokenizer, cfg.corpus_path)
            check_split(block, rebuilt)
        blocks[k] = block
        splits.append(rebuilt)
    first = blocks[min(blocks)]
    # fresh windows for the verifier's own prompts: none that any certificate trained on
    trained = {tuple(row) for split in splits for row in split.train.tolist()}
    pool = splits[0].rest
    keep = [i for i, row in enumerate(pool.tolist()) if tuple(row) not in trained]
    return Verified(blocks, first.heldout, first.certificate["data"]["recipe"], pool[keep])


def _pairs(states: list[torch.Tensor], k: int, batch_size: int):
    for start in range(0, len(states[k]), batch_size):
        rows = slice(start, start + batch_size)
        yield states[k][rows], states[k + 1][rows]


def rederive(
    verified: Verified, states: list[torch.Tensor], cfg: DictConfig, tolerance: Tolerance
) -> dict[int, ErrorReport]:
    """Stage 2: every claim of every certificate recomputed on teacher pairs (exit 3 if not)."""
    reports = {}
    for k, block in progress(verified.blocks.items(), len(verified.blocks), "re-derive", "blocks"):
        with blame(block.path):
            reports[k] = rederive_claims(block, _pairs(states, k, cfg.batch_size), tolerance)
    return reports


def chain_blocks(teacher: Teacher, verified: Verified) -> list[tuple[int, Surrogate]]:
    """(k, g_k) from the first certified block to the last: surrogates, else the teacher IR."""
    return [
        (
            k,
            verified.blocks[k].surrogate
            if k in verified.blocks
            else extract_block(teacher.adapter, k),
        )
        for k in range(verified.first, teacher.adapter.num_blocks)
    ]


def compose(
    cfg: DictConfig,
    chain_ir: list[tuple[int, Surrogate]],
    verified: Verified,
    reports: dict[int, ErrorReport],
    states: list[torch.Tensor],
    clock: StageClock | None = None,
) -> Composition:
    """Stage 3: Lipschitz and saturation constants on the composed tube, and the bound B_k.

    Blocks without a certificate are the teacher's own (g_k = f_k, eps_k = 0). The theorem is
    about exact arithmetic of the IR; the stitched model runs in fp32, so each composed eps_k
    carries the measured fp32 allowance fp(h_k) + fp(s_k) (cert/fp_allowance.py).
    """
    batch, options = cfg.batch_size, lipschitz_options(cfg)
    wanted = options.sound_prompts
    n_prompts = len(states[0]) if wanted is None else min(wanted, len(states[0]))
    states = [s[:n_prompts] for s in states]
    allowance = chain_allowance(chain_ir, lambda k: input_batches(states[k], batch))
    if clock is not None:
        log.info(
            "stage fp32 allowance on %d prompt(s) (%.1f s)", n_prompts, clock.done("fp32 allowance")
        )
    blocks = []
    for k, surrogate in chain_ir:
        measured = reports[k].eps_max if k in verified.blocks else 0.0
        blocks.append((k, surrogate, k in verified.blocks, measured + allowance[k].total))
    first = verified.first
    min_radius = options.min_radius_fraction * float(states[first].norm(dim=-1).median())
    chain = compose_chain(blocks, states[first:-1], batch, options, min_radius)
    if clock is not None:
        log.info("stage lipschitz chain (%.1f s)", clock.done("lipschitz chain"))
    # claim a short decimal at or above the exact B_L; Lean re-computes B_L and checks it
    return Composition(chain, round_up(chain.final_sound), allowance, n_prompts)


def lipschitz_options(cfg: DictConfig) -> LipschitzOptions:
    """The lipschitz group, checked (one line per bad value); the composed bound needs at least
    one prompt's tube."""
    options = LipschitzOptions.from_config(cfg.lipschitz)
    if options.sound_prompts == 0:
        raise BlockCertError(
            "lipschitz.sound_prompts=0: the composed bound needs at least one prompt's tube "
            "(null: every held-out prompt)."
        )
    return options


def prove(cfg: DictConfig, verified: Verified, composition: Composition, out: Path) -> dict:
    """Stage 5: the Lean instance of this run, kernel-checked when a Lean is installed; in a
    copy of the shipped Lean library under `out` unless lean.root names a Lean project."""
    eps_q, lips_q, sats_q = composition.chain.lean_lists("sound")
    provenance = {f"block {k}": f"{b.path} sha256={b.sha256}" for k, b in verified.blocks.items()}
    provenance["kind"] = "sound"
    lean_root = Path(cfg.lean.root) if cfg.lean.root else lean_project(out / "lean")
    lean_file, instance = write_lean_instance(
        lean_root, verified.digest(), eps_q, lips_q, composition.claimed, provenance, sats_q
    )
    result = check_lean(lean_root, lean_file) if cfg.lean.build else None
    if result is None:
        status = {"status": "skipped", "toolchain": None, "message": "lean.build=false"}
    else:
        status = {"status": result.status, "toolchain": result.toolchain, "message": result.message}
    status["file"] = str(lean_file)
    status["bound"] = instance.bound_text()  # what the theorem states: claimed / den, exactly
    return status


class StageClock:
    """Wall seconds per stage, in order (into the report's `timing_s` and the log)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def done(self, stage: str) -> float:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._last, 2)
        self._last = now
        return self.seconds[stage]


def certify(cfg: DictConfig) -> CertifyResult:
    """Run every stage; returns the report (also written under cfg.out) and summary lines."""
    lipschitz_options(cfg)  # a bad option fails before the model loads
    check_own_options(cfg.verifier)
    clock = StageClock()
    teacher = load_teacher(cfg)
    clock.done("load")
    runs = Path(cfg.runs) if cfg.runs else Path(cfg.runs_root) / teacher.model.name
    tolerance = Tolerance(**{f.name: cfg.tolerance[f.name] for f in fields(Tolerance)})
    verified = verify_certificates(cfg, teacher, runs)
    log.info(
        "stage verify: %d certificate(s), hashes, IR and split pass (%.1f s)",
        len(verified.blocks),
        clock.done("verify"),
    )
    states = teacher_trajectory(teacher.adapter, verified.heldout, cfg.batch_size)
    log.info("stage trajectory: teacher states of every block (%.1f s)", clock.done("trajectory"))
    reports = rederive(verified, states, cfg, tolerance)
    log.info(
        "stage rederive: every claim reproduced (%s) (%.1f s)",
        tolerance.describe(),
        clock.done("rederive"),
    )
    chain_ir = chain_blocks(teacher, verified)
    composition = compose(cfg, chain_ir, verified, reports, states, clock)
    log.info("stage compose: sound bound %.6g", float(composition.claimed))
    surrogates = {k: b.surrogate for k, b in verified.blocks.items()}
    stitched = stitched_evaluation(
        teacher.adapter,
        surrogates,
        verified.heldout,
        states,
        cfg.batch_size,
        # the prompts each surrogate reproduced exactly when re-derived, in the same batches
        {k: r.exact_prompts for k, r in reports.items() if r.exact_prompts is not None},
    )
    log.info("stage stitched: ppl delta %.3g (%.1f s)", stitched.ppl_delta, clock.done("stitched"))
    report, violations = build_report(
        teacher, verified, reports, composition, stitched, tolerance, cfg
    )
    # stage: the verifier's prompt set (prompts=)
    prompt_lines, prompt_violations = run_prompt_stages(
        cfg, teacher.adapter, teacher.model.tokenizer, verified, states, chain_ir, report
    )
    # stage: fresh prompts the verifier draws (its own split, the statement, its check)
    slack = {k: a.total for k, a in composition.fp_allowance.items()}
    prompt_lines += fresh_stage(
        cfg,
        teacher.adapter,
        teacher.model.tokenizer,
        verified,
        reports,
        chain_ir,
        states,
        slack if composition.n_prompts == len(verified.heldout) else None,
        report,
    )
    clock.done("prompts and statistics")
    out = Path(cfg.out) if cfg.out else runs / "certify"
    report["lean"] = prove(cfg, verified, composition, out)
    clock.done("lean")
    report["timing_s"] = clock.seconds
    files = write_report(report, stitched.final_token_deviation, out)
    report["files"] = [str(f) for f in files]
    violations = violations + prompt_violations
    if violations:
        raise BoundViolationError(
            "BUG: observed deviation exceeds the SOUND bound, contradicting the composition "
            f"theorem: {violations[0]} (report in {out})."
        )
    summary = summary_lines(report)  # its last line names the report
    return CertifyResult(report, summary[:-1] + prompt_lines + summary[-1:])
