"""train(cfg): certify one block, or many from one teacher pass (see conf/train.yaml).

Stages, each a function over small dataclasses:
  setup(cfg) -> Setup              build the prompt spec, surrogate spec, teacher, prompts, store
  capture(setup) -> int            one teacher pass over the train and held-out prompts that
                                   caches the pairs of every requested block not cached yet
  fit_block(setup, cfg, k) -> BlockRun
                                   build and distil (or extract, at full capacity) block k's
                                   surrogate; the CertificateCallback certifies it into its run dir
  train(cfg) -> TrainResult        the stages in order; `stage=capture` stops after capture
Blocks are fitted one after another; each gets the seed afresh, so block k's certificate makes
the same claims whichever other blocks share the run.
"""

from __future__ import annotations

import copy
import gc
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from blockcert.capture.blocks import check_block, select_blocks
from blockcert.capture.prompts import PromptSplit
from blockcert.capture.spec import PromptSpec
from blockcert.capture.store import PairStore
from blockcert.cert.certificate import CertificateOptions
from blockcert.cert.lipschitz import LipschitzOptions
from blockcert.errors import BlockCertError
from blockcert.lit.callback import CertificateCallback
from blockcert.lit.cascade import CascadeDataModule, StitchedInputs
from blockcert.lit.data import ResidualPairDataModule
from blockcert.lit.module import SurrogateModule
from blockcert.lit.progress import ProgressLines
from blockcert.models.adapters import BlockAdapter, adapter_for
from blockcert.models.load import load_teacher
from blockcert.surrogate.extract import extract_block

log = logging.getLogger(__name__)
STAGES = ("all", "capture")


@dataclass
class Setup:
    """What every block of a run shares: one teacher, one prompt split, one pair store."""

    spec: PromptSpec
    # what conf/surrogate/*.yaml builds (Capacity, Transcoder, ...): `full_capacity`,
    # `importance_batches` and `build(full block, teacher inputs) -> Surrogate`
    surrogate: Any
    adapter: BlockAdapter
    prompts: PromptSplit
    blocks: list[int]
    store: PairStore
    # cascade=true: the training prompts' stitched stream h~_k through this run's surrogates
    cascade: StitchedInputs | None = None


@dataclass
class BlockRun:
    block: int
    run_dir: Path
    certificate: dict
    seconds: float


@dataclass
class TrainResult:
    """Certified blocks in order (none for `stage=capture`); prompts the teacher ran over."""

    blocks: list[int]
    runs: list[BlockRun]
    teacher_prompts: int
    compressed: dict | None = None  # compress=...: the stitched model's figures (summary.json)

    def metric(self, name: str) -> float:
        """`name` (e.g. `cert/eps_max`) from the certificates; the mean over several blocks."""
        values = [certificate_metrics(run.certificate) for run in self.runs]
        if not values or name not in values[0]:
            known = ", ".join(values[0]) if values else "none (no block was certified)"
            raise BlockCertError(f"optimized_metric={name!r} is not a metric; known: {known}.")
        return sum(v[name] for v in values) / len(values)


def certificate_metrics(certificate: dict) -> dict[str, float]:
    """Scalar claims of a certificate under the names W&B shows (`cert/eps_max`, ...)."""
    metrics = certificate["metrics"]
    flat = {f"cert/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    for cov in metrics["coverage"]:
        unit = f"_{cov['unit']}" if cov.get("unit") else ""
        flat[f"cert/coverage_{cov['kind']}@{cov['tau']:g}{unit}"] = float(cov["fraction"])
    for kind, lip in certificate["lipschitz"].items():
        if lip["value"] is not None:
            flat[f"cert/lipschitz_{kind}"] = float(lip["value"])
    flat["cert/params"] = float(certificate["surrogate"]["params"])
    return flat


def setup(cfg: DictConfig) -> Setup:
    """Instantiate the config groups and the teacher; check the blocks against the teacher."""
    if cfg.stage not in STAGES:
        raise BlockCertError(f"stage={cfg.stage!r} is not one of {', '.join(STAGES)}.")
    # a bad option is one line before the model loads
    CertificateOptions.from_config(cfg.callbacks.certificate)
    LipschitzOptions.from_config(cfg.lipschitz)
    L.seed_everything(cfg.seed, verbose=False)
    spec: PromptSpec = instantiate(cfg.data)
    surrogate = instantiate(cfg.surrogate)
    teacher = load_teacher(cfg.model)
    adapter = adapter_for(teacher)
    if cfg.blocks is None:
        blocks = [check_block(cfg.block, adapter.num_blocks, teacher.name)]
    else:
        blocks = select_blocks(cfg.blocks, adapter.num_blocks, teacher.name)
    store = PairStore(adapter, cfg.cache.root, spec.batch_size, enabled=cfg.cache.enabled)
    prompts = spec.build(teacher.tokenizer)
    cascade = None
    if cfg.get("cascade") and not surrogate.full_capacity:
        cascade = StitchedInputs(adapter, prompts.train, spec.batch_size)
    return Setup(spec, surrogate, adapter, prompts, blocks, store, cascade)


def capture(s: Setup) -> int:
    """Cache the pairs of every block of the run; returns the prompts the teacher ran over.

    A full-capacity run only certifies, so it needs held-out pairs only.
    """
    if not s.store.enabled:
        log.info("cache disabled: each block streams its pairs from the teacher")
        return 0
    splits = ("heldout",) if s.surrogate.full_capacity else ("train", "heldout")
    before = s.store.teacher_prompts
    for split in splits:
        s.store.capture(s.blocks, split, getattr(s.prompts, split))
    return s.store.teacher_prompts - before


def block_config(cfg: DictConfig, block: int, run_dir: Path) -> DictConfig:
    """`cfg` as a single-block run of `block` writing into `run_dir` would see it."""
    block_cfg = copy.deepcopy(cfg)
    with open_dict(block_cfg):
        block_cfg.block = block
        block_cfg.run_dir = str(run_dir)
    return block_cfg


def fit_block(s: Setup, cfg: DictConfig, block: int, run_dir: Path) -> BlockRun:
    """Build and distil (or extract) block `block`'s surrogate; certify it into `run_dir`."""
    start = time.perf_counter()
    block_cfg = block_config(cfg, block, run_dir)
    L.seed_everything(cfg.seed, verbose=False)
    datamodule = ResidualPairDataModule(
        s.adapter, block, s.prompts, batch_size=s.spec.batch_size, seed=cfg.seed, store=s.store
    )
    full = extract_block(s.adapter, block)
    if s.surrogate.full_capacity:
        surrogate = full
    else:
        surrogate = s.surrogate.build(
            full, datamodule.sample_inputs(s.surrogate.importance_batches)
        )
    cert_cfg = block_cfg.callbacks.certificate
    # conf/surrogate/*.yaml may name its own LightningModule (a transcoder trains its MLP only)
    module_class = instantiate(block_cfg.module) if block_cfg.get("module") else SurrogateModule
    module = module_class(surrogate, taus=tuple(cert_cfg.taus_abs), **block_cfg.optim)
    certificate_cb = CertificateCallback(
        str(run_dir),
        CertificateOptions.from_config(cert_cfg),
        LipschitzOptions.from_config(block_cfg.lipschitz),
        OmegaConf.to_container(block_cfg, resolve=True),
    )
    # other callbacks of the config (e.g. a transcoder's latent report) run after the certificate
    callbacks = [certificate_cb]
    callbacks += [instantiate(c) for key, c in block_cfg.callbacks.items() if key != "certificate"]
    # A progress bar only makes sense on a terminal; a log file gets a line per epoch instead.
    bar = bool(block_cfg.trainer.get("enable_progress_bar", sys.stdout.isatty()))
    trainer = instantiate(
        block_cfg.trainer,
        callbacks=callbacks if bar else [*callbacks, ProgressLines(block)],
        logger=instantiate(block_cfg.logger) if block_cfg.get("logger") else False,
        enable_progress_bar=bar,
    )
    if s.surrogate.full_capacity:
        log.info("block %d: the exact teacher block (full capacity), certifying", block)
        certificate_cb.certify_as_is(trainer, module, datamodule)
    else:
        log.info(
            "block %d: %s surrogate, %d of %d params, distilling",
            block,
            surrogate.graph.family,
            surrogate.num_params,
            full.num_params,
        )
        if s.cascade is None:
            trainer.fit(module, datamodule=module.training_data(datamodule))
        else:  # train on h~_k from this run's earlier surrogates; certify on teacher inputs
            stitched = CascadeDataModule(datamodule, s.cascade.at(block), seed=cfg.seed)
            trainer.fit(module, datamodule=module.training_data(stitched))
            s.cascade.fitted(block, module.surrogate())
    _finish_wandb(trainer)
    certificate = certificate_cb.certificate
    if certificate is None:
        raise BlockCertError(f"training of block {block} stopped before its certificate.")
    seconds = time.perf_counter() - start
    log.info(
        "block %d certified in %.1f s: eps_max %.6g -> %s",
        block,
        seconds,
        certificate["metrics"]["eps_max"],
        run_dir,
    )
    return BlockRun(block, run_dir, certificate, seconds)


def _finish_wandb(trainer: L.Trainer) -> None:
    """Close this block's W&B run: the next block of the process starts its own."""
    from lightning.pytorch.loggers import WandbLogger

    if any(isinstance(logger, WandbLogger) for logger in trainer.loggers):
        import wandb

        wandb.finish()


def block_run_dir(cfg: DictConfig, block: int) -> Path:
    """A `block=K` run writes into run_dir; a `blocks=` run into run_dir/block<K>."""
    return Path(cfg.run_dir) if cfg.blocks is None else Path(cfg.run_dir) / f"block{block}"


def train(cfg: DictConfig) -> TrainResult:
    """Run the stages in order; returns every block's certificate."""
    start = time.perf_counter()
    s = setup(cfg)
    log.info(
        "setup: %s, blocks %s, %d train + %d held-out prompts of %d tokens (%.1f s)",
        s.adapter.teacher.name,
        _ranges(s.blocks),
        len(s.prompts.train),
        len(s.prompts.heldout),
        s.prompts.seq_len,
        time.perf_counter() - start,
    )
    if cfg.get("compress") is not None:
        if cfg.stage != "all":
            raise BlockCertError("compress=... runs its own stages: leave stage=all.")
        return compress_blocks(cfg, s)
    teacher_prompts = capture(s)
    if cfg.stage == "capture":
        return TrainResult(s.blocks, [], teacher_prompts)
    runs = []
    for block in s.blocks:
        runs.append(fit_block(s, cfg, block, block_run_dir(cfg, block)))
        gc.collect()  # Lightning objects hold cycles; free one block's before the next
    return TrainResult(s.blocks, runs, s.store.teacher_prompts)


def compress_blocks(cfg: DictConfig, s: Setup) -> TrainResult:
    """compress=...: the whole recipe (blockcert.compress.pipeline) into run_dir/block<K>/."""
    from blockcert.compress.pipeline import compress

    recipe = instantiate(cfg.compress, _convert_="all")
    config = OmegaConf.to_container(cfg, resolve=True)
    result = compress(recipe, s.adapter, s.prompts, s.blocks, s.store, cfg.run_dir, config)
    runs = [
        BlockRun(k, Path(cfg.run_dir) / f"block{k}", cert, 0.0)
        for k, cert in result.certificates.items()
    ]
    return TrainResult(s.blocks, runs, s.store.teacher_prompts, result.summary)


def _ranges(blocks: list[int]) -> str:
    """`[0, 1, 2, 5]` -> `0..2, 5`."""
    runs = [[blocks[0], blocks[0]]]
    for k in blocks[1:]:
        if k == runs[-1][1] + 1:
            runs[-1][1] = k
        else:
            runs.append([k, k])
    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in runs)


def blocks_table(runs: list[BlockRun]) -> list[str]:
    """One line per certified block (the summary of a `blocks=` run)."""
    lines = []
    for run in runs:
        m, lip = run.certificate["metrics"], run.certificate["lipschitz"]["sound"]
        sur = run.certificate["surrogate"]
        kept = 100.0 * sur["params"] / sur["teacher_params"]
        lines.append(
            f"block {run.block:>3}: eps_max {m['eps_max']:.4g}  mean {m['mean']:.4g}  "
            f"rel max {m['rel_max']:.3%}  params {kept:.0f}%"
            f"  L_sound {lipschitz_shown(lip, '.4g')}  ({run.seconds:.1f} s)"
        )
    return lines


def summary_lines(cert: dict) -> list[str]:
    m, s, lip = cert["metrics"], cert["surrogate"], cert["lipschitz"]
    kept = 100.0 * s["params"] / s["teacher_params"]
    lines = [
        f"block {cert['block']} of {cert['model']['name']}: {m['n_tokens']} held-out tokens "
        f"({m['n_prompts']} prompts), metrics in {m['dtype']}",
        f"  eps_max {m['eps_max']:.6g}  mean {m['mean']:.4g}  p50 {m['p50']:.4g}  "
        f"p99 {m['p99']:.4g}  rel mean {m['rel_mean']:.3%}  rel max {m['rel_max']:.3%}",
    ]
    for c in m["coverage"]:
        unit = f" per {c['unit']}" if c.get("unit") else ""
        lines.append(
            f"  coverage {c['kind']}<={c['tau']:g}{unit}: {c['fraction']:.4%} "
            f"(miss rate <= {c['miss_rate_upper']:.3%} at {1 - c['delta']:.0%} confidence)"
        )
    lines.append(f"  params {s['params']} of {s['teacher_params']} ({kept:.1f}%), {s['capacity']}")
    for kind, value in lip.items():
        shown = lipschitz_shown(value, ".6g")
        lines.append(f"  Lipschitz ({kind}, r={value['radius']:.4g}): {shown}")
    return lines


def lipschitz_shown(lip: dict, spec: str) -> str:
    """A certificate's constant as the summary shows it; None is unbounded or not computed.
    A sound constant that is vacuous at its radius says so, and which chain step wins there."""
    if lip["value"] is not None:
        shown = format(lip["value"], spec)
        if lip.get("vacuous"):
            a = lip["parts"]["saturation"]
            shown += (
                f" (vacuous at this radius: L*r = {lip['value'] * lip['radius']:.3g} >= "
                f"r + a = {lip['radius'] + a:.3g}; the chain steps by B + a there)"
            )
        return shown
    return (
        "not computed (0 prompts)" if lip["parts"].get("prompts") == 0 else "unbounded on this tube"
    )
