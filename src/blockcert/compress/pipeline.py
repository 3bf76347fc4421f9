"""compress(...): the whole recipe, one stage after another, each resumable from the run dir.

    widths    allocation of the global budget (compress/widths.json)
    walk      per-block cut + compensation on the streamed training split (compress/walk/)
    e2e       the end-to-end KL pass over all surrogates (compress/e2e/)
    certify   every block certified on teacher inputs of the held-out prompts (block<k>/)
    evaluate  the stitched model on the held-out and stress prompts (compress/summary.json)

A stage whose output exists is not run again; the walk and the certificates resume block by
block, so a killed run continues where it stopped when started again on the same run dir
(`hydra.run.dir=<run dir>`). compress/recipe.json records what the run was started with; a
restart with another recipe, model, data or block set is refused.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from blockcert.atomic import write_text_atomic
from blockcert.capture.prompts import PromptSplit
from blockcert.capture.store import PairStore
from blockcert.cert.certificate import CERTIFICATE_FILE
from blockcert.compress.allocation import Widths, allocate_widths
from blockcert.compress.cut import cut_heads, cut_neurons
from blockcert.compress.recipe import Recipe
from blockcert.compress.summary import StitchedEvaluator
from blockcert.compress.walk import BlockCalibration, WalkStore, walk
from blockcert.errors import BlockCertError
from blockcert.hashing import sha256_file
from blockcert.lit.joint import joint_finetune
from blockcert.lit.recertify import recertify
from blockcert.models.adapters import BlockAdapter
from blockcert.surrogate.capacity import factor_low_rank
from blockcert.surrogate.extract import extract_block
from blockcert.surrogate.ir import GRAPH_FILE, WEIGHTS_FILE, Surrogate

log = logging.getLogger(__name__)
STATE_DIR = "compress"


@dataclass
class Compressed:
    """Certified blocks {k: certificate} and the stitched model's figures."""

    certificates: dict[int, dict]
    summary: dict
    seconds: dict[str, float]


class RunState:
    """The files of one compression run under `run_dir/compress/`."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / STATE_DIR

    def file(self, name: str) -> Path:
        return self.root / name

    def read(self, name: str) -> dict | None:
        path = self.file(name)
        return json.loads(path.read_text()) if path.is_file() else None

    def write(self, name: str, data: dict) -> None:
        write_text_atomic(self.file(name), json.dumps(data, indent=1, sort_keys=True))

    def claim(self, identity: dict) -> None:
        """Record the run's identity, or check that a resumed run has the same one."""
        before = self.read("recipe.json")
        if before is None:
            self.write("recipe.json", identity)
        elif before != json.loads(json.dumps(identity)):
            changed = sorted(k for k in identity if before.get(k) != identity[k])
            raise BlockCertError(
                f"{self.root} holds a compression run with another {', '.join(changed)}; "
                "resume it with the same options, or start a new run dir."
            )


def block_fit(recipe: Recipe, widths: Widths, rank: int | None):
    """The walk's fit: heads, then neurons, then (optionally) low rank."""

    def fit(cal: BlockCalibration) -> Surrogate:
        k, surrogate = cal.block, cal.full
        heads = widths.heads[k]
        if heads < surrogate.graph.capacity["heads"] or recipe.calibration.refit_attention:
            surrogate = cut_heads(surrogate, cal.attention(), heads, recipe.pruning)
        surrogate = cut_neurons(surrogate, cal.mlp(surrogate), widths.neurons[k], recipe.pruning)
        if rank is not None:
            factor_low_rank(surrogate, rank)
            surrogate.graph.capacity["rank"] = rank
        return surrogate

    return fit


def stage_widths(
    state: RunState, recipe: Recipe, adapter: BlockAdapter, prompts: PromptSplit, blocks
) -> Widths:
    saved = state.read("widths.json")
    if saved is not None:
        log.info("widths: resumed from %s", state.file("widths.json"))
        return Widths.from_dict(saved)
    fulls = [extract_block(adapter, k) for k in blocks]
    flat = recipe.budget.flat(fulls, blocks, recipe.bias_params * adapter.d_model)
    batch = recipe.calibration.batch_size
    widths = allocate_widths(adapter, prompts.train, flat, recipe.allocation, recipe.pruning, batch)
    state.write("widths.json", widths.to_dict())
    return widths


def stage_walk(state, recipe: Recipe, adapter, prompts: PromptSplit, blocks, widths: Widths):
    cal = recipe.calibration
    ids = prompts.train if cal.prompts is None else prompts.train[: cal.prompts]
    log.info(
        "walk: %d calibration prompts (%d tokens), %s inputs",
        len(ids),
        ids.numel(),
        cal.inputs,
    )
    return walk(
        adapter,
        ids,
        blocks,
        block_fit(recipe, widths, recipe.budget.rank(adapter.d_model)),
        inputs=cal.inputs,
        stitched_weight=cal.stitched_weight,
        batch_size=cal.batch_size,
        store=WalkStore(state.file("walk")),
    )


def stage_e2e(state, recipe: Recipe, adapter, prompts: PromptSplit, surrogates, seed: int):
    e2e = recipe.e2e
    store = WalkStore(state.file("e2e"))
    if e2e.prompts == 0:
        return surrogates
    if state.read("e2e.json") is not None:
        log.info("e2e: resumed from %s", store.root)
        return {k: store.load(k) for k in surrogates}
    ids = prompts.train[: e2e.prompts]
    log.info("e2e: %d prompts, %d epoch(s), lr %g", len(ids), e2e.epochs, e2e.lr)
    start = time.perf_counter()
    tuned = joint_finetune(
        adapter,
        surrogates,
        ids,
        batch_size=e2e.batch_size,
        max_epochs=e2e.epochs,
        lr=e2e.lr,
        block_weight=e2e.block_weight,
        seed=seed,
        progress=True,
    )
    for k, surrogate in tuned.items():
        store.save(k, surrogate)
    state.write("e2e.json", {"seconds": time.perf_counter() - start, "prompts": len(ids)})
    return tuned


def _certified(run_dir: Path, k: int, surrogate_dir: Path) -> dict | None:
    """Block k's certificate when it certifies exactly the IR files in `surrogate_dir`."""
    path = run_dir / f"block{k}" / CERTIFICATE_FILE
    if not path.is_file():
        return None
    certificate = json.loads(path.read_text())
    files = certificate.get("surrogate", {}).get("files", {})
    same = all(files.get(n) == sha256_file(surrogate_dir / n) for n in (GRAPH_FILE, WEIGHTS_FILE))
    return certificate if same else None


def stage_certify(state, adapter, prompts, store: PairStore, final, final_dir, config: dict):
    """Certify every block (held-out pairs of all blocks captured in one teacher pass first)."""
    store.capture(sorted(final), "heldout", prompts.heldout)
    certificates = {}
    for k in sorted(final):
        certificate = _certified(state.run_dir, k, final_dir.path(k))
        if certificate is None:
            certificate = recertify(adapter, {k: final[k]}, prompts, state.run_dir, config)[k]
        certificates[k] = certificate
        log.info(
            "certified block %d: eps_max %.4g, params %d of %d",
            k,
            certificate["metrics"]["eps_max"],
            certificate["surrogate"]["params"],
            certificate["surrogate"]["teacher_params"],
        )
    return certificates


def compress(
    recipe: Recipe,
    adapter: BlockAdapter,
    prompts: PromptSplit,
    blocks: list[int],
    store: PairStore,
    run_dir: str | Path,
    config: dict,
) -> Compressed:
    """Run (or resume) every stage; config: the resolved train config the certificates record
    (a resumed run must share its model, data, compress and seed sections, and the blocks)."""
    state = RunState(run_dir)
    identity = {key: config.get(key) for key in ("model", "data", "compress", "seed")}
    state.claim({**identity, "blocks": list(blocks)})
    seconds, start = {}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal start
        seconds[name] = time.perf_counter() - start
        log.info("stage %s done in %.1f s", name, seconds[name])
        start = time.perf_counter()

    widths = stage_widths(state, recipe, adapter, prompts, blocks)
    lap("widths")
    walked = stage_walk(state, recipe, adapter, prompts, blocks, widths)
    lap("walk")
    final = stage_e2e(state, recipe, adapter, prompts, walked, config.get("seed", 0))
    final_dir = WalkStore(state.file("e2e" if recipe.e2e.prompts else "walk"))
    lap("e2e")
    certificates = stage_certify(state, adapter, prompts, store, final, final_dir, config)
    lap("certify")
    summary = state.read("summary.json")
    if summary is None:
        summary = StitchedEvaluator(adapter, prompts.heldout)(final)
        summary["widths"] = widths.to_dict()
        state.write("summary.json", summary)
    lap("evaluate")
    state.write("timing.json", seconds)  # this invocation's stages (a resumed stage is ~0 s)
    return Compressed(certificates, summary, seconds)
