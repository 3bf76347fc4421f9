"""edit(cfg): write facts into block k's MLP, certify the edited block, report (conf/edit.yaml).

Stages: teacher and prompts -> key covariance C on training tokens -> per fact k*, v* (ROME)
-> closed-form dW (ROME / MEMIT) -> budget: largest scale s <= 1 whose drift fits, smallest s
that still succeeds -> edited block W + s dW as an IR surrogate -> certificate measured against
the ORIGINAL block on held-out prompts (eps = drift on unrelated text) -> editing metrics ->
report; optionally certify.py composes the global bound with every other block as the teacher.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from blockcert.capture.blocks import check_block
from blockcert.cert.certificate import CertificateOptions, certify_block
from blockcert.cert.lipschitz import LipschitzOptions
from blockcert.edit.budget import budget_from, heldout_drift, largest_scale, smallest_scale
from blockcert.edit.facts import Fact, Query, encode_query, facts_from
from blockcert.edit.keys import DownProjection, key_second_moment
from blockcert.edit.metrics import Probe, QueryScore, heldout_locality
from blockcert.edit.solve import memory_update, regularised
from blockcert.edit.value import FactValue, ValueSettings, optimise_value
from blockcert.errors import BlockCertError
from blockcert.lit.data import ResidualPairDataModule
from blockcert.models.adapters import BlockAdapter, adapter_for
from blockcert.models.load import load_teacher
from blockcert.surrogate.extract import extract_block
from blockcert.surrogate.interpret import run_graph
from blockcert.surrogate.ir import Surrogate

log = logging.getLogger(__name__)


@dataclass
class EditedBlock:
    """The original block, the full update dW `[d, m]` and the weight it is added to."""

    original: Surrogate
    update: torch.Tensor
    weight_key: str

    def at(self, scale: float) -> Surrogate:
        weights = dict(self.original.weights)
        w = weights[self.weight_key].double() + scale * self.update
        weights[self.weight_key] = w.float()
        return Surrogate(self.original.graph, weights)


def block_fn(surrogate: Surrogate):
    return lambda h: run_graph(surrogate.graph, surrogate.weights, h)


def context_prefixes(tokenizer, train_ids: torch.Tensor, n: int, n_tokens: int) -> list[str]:
    """ROME's contexts: the bare prompt plus n short prefixes "<text>. " (here cut from the
    training prompts instead of sampled from the model, so that they are deterministic)."""
    prefixes = [""]
    special = set(tokenizer.all_special_ids)
    for row in train_ids[:n]:
        ids = [t for t in row.tolist() if t not in special][:n_tokens]
        text = " ".join(tokenizer.decode(ids).split())
        if text:
            prefixes.append(f"{text}. ")
    return prefixes


def success(scores: list[QueryScore], min_prob: float | None) -> bool:
    """Every fact's target is greedy (top-1), or has probability >= min_prob when set."""
    if min_prob is None:
        return all(s.top1 for s in scores)
    return all(s.prob >= min_prob for s in scores)


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def _setup(cfg: DictConfig):
    L.seed_everything(cfg.seed, verbose=False)
    teacher = load_teacher(cfg.model)
    teacher.model.requires_grad_(False)  # only the value delta is optimised
    adapter = adapter_for(teacher)
    check_block(cfg.block, adapter.num_blocks, teacher.name)
    data = cfg.data
    prompts = instantiate(data).build(teacher.tokenizer)
    datamodule = ResidualPairDataModule(
        adapter,
        cfg.block,
        prompts,
        batch_size=data.batch_size,
        cache=cfg.cache.enabled,
        cache_root=cfg.cache.root,
        seed=cfg.seed,
    )
    return teacher, adapter, prompts, datamodule


def compute_update(
    adapter: BlockAdapter, k: int, original: Surrogate, facts: list[Fact], contexts, datamodule, e
) -> tuple[torch.Tensor, list[FactValue]]:
    """dW from C on the training keys and (k*, v* - W k*) of every fact."""
    tokenizer = adapter.teacher.tokenizer
    second_moment = key_second_moment(original, (x for x, _ in datamodule.train_set))
    settings = ValueSettings(e.steps, e.lr, e.norm_penalty, e.clamp_norm, e.stop_nll)
    values = []
    for fact in facts:
        queries = [
            encode_query(tokenizer, fact.prompt, fact.target, fact.subject, c) for c in contexts
        ]
        values.append(optimise_value(adapter, original, k, queries, settings))
        log.info(
            "fact %r: target NLL %.4g after %d steps", fact.prompt, values[-1].nll, values[-1].steps
        )
    keys = torch.stack([v.key for v in values], dim=1)
    residuals = torch.stack([v.delta for v in values], dim=1)
    update = memory_update(regularised(second_moment, e.cov_ridge), keys, residuals, e.memit_lambda)
    return update, values


def _tradeoff(edit_probe, para_probe, edited, drift, scales, min_prob) -> list[dict]:
    rows = []
    for s in sorted(set(scales)):
        block = block_fn(edited.at(s))
        scores = edit_probe.scores(block)
        para = para_probe.scores(block)
        rows.append(
            {
                "scale": s,
                "eps_upper": drift.bound(s),
                "efficacy_prob": _mean(x.prob for x in scores),
                "generalisation_prob": _mean(x.prob for x in para),
                "success": success(scores, min_prob),
            }
        )
    return rows


def _query_rows(queries: list[Query], texts: list[str], before, after) -> list[dict]:
    return (
        [
            {"prompt": t, "before": b.to_dict(), "after": a.to_dict()}
            for t, b, a in zip(texts, before, after, strict=True)
        ]
        if queries
        else []
    )


@dataclass(frozen=True)
class EditQueries:
    """The edit's prompts (efficacy), their paraphrases (generalisation) and unrelated
    prompts (specificity), tokenised, with a probe of the block for each group."""

    edit: list[Query]
    paraphrase_texts: list[str]
    paraphrase: list[Query]
    neighbor_texts: list[str]
    neighbor: list[Query]
    edit_probe: Probe
    paraphrase_probe: Probe
    neighbor_probe: Probe


def edit_queries(adapter, k: int, facts: list[Fact], neighbors) -> EditQueries:
    tokenizer = adapter.teacher.tokenizer

    def query(text: str, fact: Fact) -> Query:
        return encode_query(
            tokenizer, text, fact.target, fact.subject if text == fact.prompt else None
        )

    edits = [query(f.prompt, f) for f in facts]
    pairs = [(p, f) for f in facts for p in f.paraphrases]
    paraphrases = [query(p, f) for p, f in pairs]
    neighbor_texts = list(neighbors or [])
    neighbor = [query(t, facts[0]) for t in neighbor_texts]
    return EditQueries(
        edits,
        [p for p, _ in pairs],
        paraphrases,
        neighbor_texts,
        neighbor,
        Probe(adapter, k, edits),
        Probe(adapter, k, paraphrases),
        Probe(adapter, k, neighbor),
    )


def choose_scale(edited, drift, budget, queries: EditQueries, e, k: int):
    """(scale, smallest succeeding scale, trade-off rows): the largest scale within the budget,
    once the edit is known to succeed there; one-line errors otherwise."""

    def succeeds(scale: float) -> bool:
        return success(queries.edit_probe.scores(block_fn(edited.at(scale))), e.min_prob)

    s_budget = largest_scale(budget, drift)
    s_min = smallest_scale(succeeds, high=1.0)
    scales = [i / (e.tradeoff_points - 1) for i in range(e.tradeoff_points)] + [s_budget]
    scales += [s_min] if s_min else []
    tradeoff = _tradeoff(
        queries.edit_probe, queries.paraphrase_probe, edited, drift, scales, e.min_prob
    )
    if s_min is None:
        best = max(r["efficacy_prob"] for r in tradeoff)
        raise BlockCertError(
            f"the edit does not succeed at block {k} even unscaled (target probability "
            f"{best:.3g}); try another block, more edit.steps or a lower edit.min_prob."
        )
    if s_min > s_budget:
        raise BlockCertError(
            f"the edit needs eps >= {drift.bound(s_min):.4g} at block {k} (scale {s_min:.3g} of "
            f"the closed-form update) but the budget is {budget:.4g}; raise edit.max_eps / "
            "edit.max_eps_rel or edit another block."
        )
    return s_budget, s_min, tradeoff


def certify_edit_block(cfg: DictConfig, surrogate, datamodule, budget) -> tuple[dict, float]:
    """(the edited block's certificate, seconds); its measured drift must fit the budget."""
    started = time.perf_counter()
    certificate = certify_block(
        surrogate,
        datamodule,
        Path(cfg.run_dir),
        CertificateOptions.from_config(cfg.callbacks.certificate),
        LipschitzOptions.from_config(cfg.lipschitz),
        OmegaConf.to_container(cfg, resolve=True),
    )
    eps = certificate["metrics"]["eps_max"]
    if budget is not None and eps > budget:
        raise BlockCertError(
            f"the certified drift {eps:.6g} exceeds the budget {budget:.6g} after fp32 "
            "re-evaluation; lower the budget margin or the scale."
        )
    return certificate, time.perf_counter() - started


def _fact_rows(facts, queries: list[Query], values) -> list[dict]:
    return [
        {
            "prompt": f.prompt,
            "target": f.target,
            "subject": f.subject,
            "target_tokens": len(q.target),
            "key_position": q.key_pos,
            "value_nll": v.nll,
            "value_steps": v.steps,
            "delta_norm": float(v.delta.norm()),
            "mlp_out_norm": v.rho,
        }
        for f, q, v in zip(facts, queries, values, strict=True)
    ]


def _certificate_row(certificate: dict, run_dir: Path) -> dict:
    metrics = certificate["metrics"]
    return {
        "path": str(run_dir / "certificate.json"),
        "sha256": certificate["certificate_sha256"],
        "eps_max": metrics["eps_max"],
        "eps_rel_max": metrics["rel_max"],
        "coverage": metrics["coverage"],
        "lipschitz": {kind: v["value"] for kind, v in certificate["lipschitz"].items()},
        "n_tokens": metrics["n_tokens"],
    }


def _metric_rows(adapter, k: int, queries: EditQueries, facts, after_block) -> dict:
    """Efficacy, generalisation and specificity, each before and after the edit."""
    teacher_block = lambda h: adapter.block(k, h).float()  # noqa: E731
    groups = {
        "efficacy": (queries.edit, [f.prompt for f in facts], queries.edit_probe),
        "generalisation": (
            queries.paraphrase,
            queries.paraphrase_texts,
            queries.paraphrase_probe,
        ),
        "neighborhood": (queries.neighbor, queries.neighbor_texts, queries.neighbor_probe),
    }
    return {
        name: _query_rows(q, texts, probe.scores(teacher_block), probe.scores(after_block))
        for name, (q, texts, probe) in groups.items()
    }


def edit(cfg: DictConfig) -> dict:
    """Run one edit end to end: solve the update, scale it to the budget, certify the edited
    block, measure the editing metrics; returns the edit report (certificate in cfg.run_dir)."""
    e, k, run_dir = cfg.edit, int(cfg.block), Path(cfg.run_dir)
    facts = facts_from(e)
    teacher, adapter, prompts, datamodule = _setup(cfg)
    original = extract_block(adapter, k)
    down = DownProjection.of(original.graph)
    contexts = context_prefixes(teacher.tokenizer, prompts.train, e.n_prefixes, e.prefix_tokens)
    started = time.perf_counter()
    update, values = compute_update(adapter, k, original, facts, contexts, datamodule, e)
    edited = EditedBlock(original, update, down.weight)
    t_solve = time.perf_counter() - started
    started = time.perf_counter()
    _ = datamodule.heldout_set  # capture (or read) the held-out pairs of block k
    t_capture = time.perf_counter() - started
    drift = heldout_drift(original, update, datamodule.heldout_pairs())
    budget = budget_from(e.max_eps, e.max_eps_rel, drift.median_norm)
    queries = edit_queries(adapter, k, facts, e.neighbors)
    scale, s_min, tradeoff = choose_scale(edited, drift, budget, queries, e, k)
    surrogate = edited.at(scale)
    certificate, t_certify = certify_edit_block(cfg, surrogate, datamodule, budget)
    after_block = block_fn(surrogate)
    locality = heldout_locality(
        adapter, k, datamodule.heldout_pairs(), prompts.heldout, after_block
    )
    return {
        "model": teacher.describe(),
        "block": k,
        "method": "rome" if len(facts) == 1 and e.memit_lambda == 0 else "memit",
        "facts": _fact_rows(facts, queries.edit, values),
        "contexts": contexts,
        "update": {
            "rank": int(torch.linalg.matrix_rank(update).item()),
            "frobenius": float(update.norm()),
            "weight_frobenius": float(original.weights[down.weight].norm()),
            "memit_lambda": e.memit_lambda,
            "cov_ridge": e.cov_ridge,
            "n_train_tokens": int(prompts.train.numel()),
        },
        "budget": {
            "max_eps": e.max_eps,
            "max_eps_rel": e.max_eps_rel,
            "budget": budget,
            "drift": drift.to_dict(),
            "scale": scale,
            "min_success_scale": s_min,
            "min_success_eps": drift.bound(s_min),
            "success_criterion": "top1" if e.min_prob is None else f"prob>={e.min_prob}",
        },
        "tradeoff": tradeoff,
        **_metric_rows(adapter, k, queries, facts, after_block),
        "locality": locality.to_dict(),
        "certificate": _certificate_row(certificate, run_dir),
        "timing": _timing(adapter.num_blocks, k, t_solve, t_capture, t_certify),
        "success": success(queries.edit_probe.scores(after_block), e.min_prob),
    }


def _timing(n_blocks: int, k: int, t_solve: float, t_capture: float, t_certify: float) -> dict:
    """Seconds. Re-certifying every block costs n_blocks certify_block calls plus capturing
    each block's held-out pairs, which runs blocks 0..j: sum_j (j+1)/(k+1) * t_capture."""
    capture_all = t_capture * n_blocks * (n_blocks + 1) / (2 * (k + 1))
    return {
        "solve_s": t_solve,
        "capture_heldout_s": t_capture,
        "certify_block_s": t_certify,
        "local_recert_s": t_capture + t_certify,
        "all_blocks_recert_estimate_s": n_blocks * t_certify + capture_all,
    }
