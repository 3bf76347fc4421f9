"""certify's stage on fresh prompts: the verifier's own split, the statement a reader quotes,
its check, and how far it travels.

1. One draw of fresh prompts (evaluate/fresh_prompts.py), hashed before any is evaluated.
2. The own split: eps_k per certified block against each certificate (evaluate/own_split.py);
   its per-prompt metrics also fix the scales of the statement.
3. The direct joint statement on the calibration split (evaluate/statement.py), validated on
   the untouched check split.
4. The same metrics on prompts the statement does not cover (the stress set, a second
   public-domain corpus), labelled so.
5. Opt-in: the compositional statement (evaluate/compositional.py).

A stitched model all of whose certified blocks are the teacher's own (the same IR graph and
weights as the teacher block, bit-identical on every re-derived held-out prompt) computes the
teacher's function with the teacher's operations: its metrics are 0 on every prompt, so no
fresh prompt is run and each statement holds with threshold 0 (the report says so).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from blockcert.capture.corpus import BibleCorpus
from blockcert.capture.prompts import build_prompts
from blockcert.cert.metrics import ErrorReport
from blockcert.errors import BlockCertError
from blockcert.evaluate.compositional import compositional_section
from blockcert.evaluate.fresh_eval import METRICS, FreshMetrics, evaluate_fresh
from blockcert.evaluate.fresh_prompts import FreshDraw, draw_fresh
from blockcert.evaluate.own_split import own_split_lines, own_split_section
from blockcert.evaluate.prompt_sets import context_length, load_prompt_set
from blockcert.evaluate.statement import calibration_size, joint_statement, shift_rows
from blockcert.evaluate.trajectory import trajectory_is_exact
from blockcert.models.adapters import BlockAdapter
from blockcert.surrogate.extract import extract_block
from blockcert.surrogate.ir import Surrogate

NOTE = (
    "statements about fresh prompts drawn like the verifier's calibration prompts (the prompt "
    "is the i.i.d. unit); not worst case, and not about other text"
)


def identical_blocks(
    adapter: BlockAdapter, surrogates: Mapping[int, Surrogate], reports: Mapping[int, ErrorReport]
) -> set[int]:
    """Certified blocks that are the teacher's own: same graph and weights as the extracted
    teacher block, and bit-identical outputs on every re-derived held-out prompt."""
    same = set()
    for k, g in surrogates.items():
        exact = reports[k].exact_prompts
        if exact is None or not bool(exact.all()):
            continue
        teacher = extract_block(adapter, k)
        if (
            g.graph.to_json() == teacher.graph.to_json()
            and g.weights.keys() == teacher.weights.keys()
        ):
            if all(torch.equal(g.weights[n], teacher.weights[n]) for n in g.weights):
                same.add(k)
    return same


def _counts(cfg) -> dict[str, int]:
    stats, own = cfg.statistics, cfg.verifier.n_prompts
    if not stats.enabled:
        return {"own": own, "calibration": 0, "check": 0}
    if own < 1:
        raise BlockCertError(
            "statistics.enabled needs the verifier's own prompts (verifier.n_prompts >= 1): "
            "they fix the statement's scales."
        )
    n_cal = stats.calibration_prompts or calibration_size(stats.confidence, stats.miss_rate)
    return {"own": own, "calibration": n_cal, "check": stats.check_prompts}


def _shift_sets(stats, adapter: BlockAdapter, tokenizer, draw: FreshDraw, seq_len: int):
    """{name: prompts} the statement does not cover (stress set, a second corpus)."""
    sets = {}
    for name in stats.shift:
        if name == "stress":
            sets["stress set"] = load_prompt_set(
                "stress", tokenizer, context_length(adapter.config)
            ).ids
        elif name == "kjv":
            split = build_prompts(
                BibleCorpus(), tokenizer, seq_len, 1, stats.shift_prompts, seed=draw.seed
            )
            sets["King James Bible"] = list(split.heldout)
        else:
            raise BlockCertError(f"statistics.shift: unknown set {name!r}; use stress and/or kjv.")
    return sets


class _Evaluator:
    """Per-prompt metrics of the stitched model (all zero where it is the teacher)."""

    def __init__(self, adapter, surrogates, identical, batch_size, teacher_model: bool):
        self.args = (adapter, surrogates, identical)
        self.batch_size, self.teacher_model = batch_size, teacher_model

    def __call__(self, prompts: Sequence[torch.Tensor], what: str, eps_rows: int = 0):
        if self.teacher_model:
            tokens = sum(len(p) for p in prompts)
            return FreshMetrics.zeros(len(prompts), list(self.args[1]), eps_rows, tokens)
        return evaluate_fresh(*self.args, prompts, self.batch_size, eps_rows, what)


def fresh_stage(
    cfg,
    adapter: BlockAdapter,
    tokenizer,
    verified,
    reports: Mapping[int, ErrorReport],
    chain: Sequence[tuple[int, Surrogate]],
    states: list[torch.Tensor],
    slack: Mapping[int, float] | None,
    report: dict,
) -> list[str]:
    """Adds report["fresh"], ["own_split"], ["statistics"]; returns the summary lines."""
    counts = _counts(cfg)
    if sum(counts.values()) == 0:
        report["own_split"] = report["statistics"] = None
        return []
    stats = cfg.statistics
    draw = draw_fresh(
        cfg.verifier,
        counts,
        verified.recipe,
        verified.fresh_pool,
        tokenizer,
        stats.lengths,
        stats.min_length,
    )
    report["fresh"] = draw.describe()  # seed and hashes, fixed before any prompt is evaluated
    surrogates = {k: b.surrogate for k, b in verified.blocks.items()}
    certificates = {k: b.certificate for k, b in verified.blocks.items()}
    identical = identical_blocks(adapter, surrogates, reports)
    teacher_model = set(surrogates) <= identical and trajectory_is_exact(adapter)
    evaluate = _Evaluator(adapter, surrogates, identical, cfg.batch_size, teacher_model)
    own = evaluate(draw.splits["own"], "verifier's own prompts", len(draw.splits["own"]))
    heldout = {k: r.prompt_max for k, r in reports.items()}
    section, findings = own_split_section(
        cfg.verifier, draw, own.block_eps, heldout, certificates, verified.recipe
    )
    report["own_split"], lines = section, own_split_lines(section)
    report["findings"] += findings
    if not stats.enabled:
        report["statistics"] = None
        return lines
    scales = {name: float(own.values[name].max()) for name in METRICS}
    calibration = evaluate(draw.splits["calibration"], "calibration prompts")
    covers = f"{draw.lengths}, from {draw.corpus}"
    statement = joint_statement(
        calibration.values, scales, stats.confidence, stats.miss_rate, covers
    )
    check = statement.check(evaluate(draw.splits["check"], "check prompts").values)
    shift = {
        name: shift_rows(statement, evaluate(prompts, name).values)
        for name, prompts in _shift_sets(
            stats, adapter, tokenizer, draw, verified.heldout.shape[1]
        ).items()
    }
    section = {
        "note": NOTE,
        "teacher_model": teacher_model,
        "statement": statement.to_dict(),
        "check": check,
        "shift": shift,
        "compositional": None,
    }
    if stats.compositional.enabled:
        section["compositional"] = compositional_section(
            adapter,
            verified.heldout,
            states,
            surrogates,
            certificates,
            chain,
            slack or {},
            stats.compositional,
            cfg.lipschitz,
            cfg.batch_size,
            draw.splits["check"],
        )
    report["statistics"] = section
    return lines + statistics_lines(section)


def statistics_lines(section: dict) -> list[str]:
    """The statement as a sentence, its check, and what it does not cover."""
    lines = [f"fresh prompts ({section['note']}):"]
    if section["teacher_model"]:
        lines.append(
            "  every certified block is the teacher's own (same graph and weights, bit-identical "
            "on every held-out prompt): the stitched model is the teacher, all metrics 0"
        )
    lines.append(f"  {section['statement']['statement']}")
    c, stated = section["check"], section["statement"]["miss_upper"]
    lines.append(
        f"  check split: {c['beyond']}/{c['n']} prompts beyond it (stated <= {stated:.3g}; up "
        f"to {c['allowed']} is consistent at the same confidence): "
        f"{'ok' if c['within'] else 'EXCEEDED'}"
    )
    for name, row in section["shift"].items():
        lines.append(
            f"  not covered, out of distribution: {name}: {row['beyond']}/{row['n']} prompts "
            "beyond the statement's thresholds"
        )
    comp = section["compositional"]
    if comp is not None:
        lines.append(
            f"  compositional: {comp['statement']}"
            if comp["informative"]
            else f"  compositional: not stated ({comp['why']})"
        )
    return lines
