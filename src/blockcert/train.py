"""train(cfg): capture pairs of one block, distil a surrogate, certify it (see conf/train.yaml)."""

from __future__ import annotations

import logging
from dataclasses import fields

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from blockcert.capture.prompts import build_prompts
from blockcert.errors import BlockCertError
from blockcert.lit.data import ResidualPairDataModule
from blockcert.lit.module import SurrogateModule
from blockcert.models.adapters import adapter_for
from blockcert.surrogate.capacity import Capacity, reduce
from blockcert.surrogate.extract import extract_block

log = logging.getLogger(__name__)


def capacity_from(cfg: DictConfig) -> Capacity:
    return Capacity(**{f.name: cfg[f.name] for f in fields(Capacity) if f.name in cfg})


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
        lines.append(
            f"  coverage {c['kind']}<={c['tau']:g}: {c['fraction']:.4%} "
            f"(miss rate <= {c['miss_rate_upper']:.3%} at {1 - c['delta']:.0%} confidence)"
        )
    lines.append(f"  params {s['params']} of {s['teacher_params']} ({kept:.1f}%), {s['capacity']}")
    for kind, value in lip.items():
        shown = "unbounded on this tube" if value["value"] is None else f"{value['value']:.6g}"
        lines.append(f"  Lipschitz ({kind}, r={value['radius']:.4g}): {shown}")
    return lines


def train(cfg: DictConfig) -> dict:
    """Run one block end to end; returns the certificate."""
    L.seed_everything(cfg.seed, verbose=False)
    teacher = instantiate(cfg.model)
    adapter = adapter_for(teacher)
    if not 0 <= cfg.block < adapter.num_blocks:
        raise BlockCertError(
            f"block={cfg.block} is out of range: {teacher.name} has blocks "
            f"0..{adapter.num_blocks - 1}."
        )
    data = cfg.data
    prompts = build_prompts(
        instantiate(data.corpus),
        teacher.tokenizer,
        seq_len=data.seq_len,
        n_train=data.n_train_prompts,
        n_heldout=data.n_heldout_prompts,
        seed=data.seed,
    )
    datamodule = ResidualPairDataModule(
        adapter,
        cfg.block,
        prompts,
        batch_size=data.batch_size,
        cache=cfg.cache.enabled,
        cache_root=cfg.cache.root,
        seed=cfg.seed,
    )
    capacity = capacity_from(cfg.surrogate)
    full = extract_block(adapter, cfg.block)
    if capacity.full_capacity:
        surrogate = full
    else:
        surrogate = reduce(full, capacity, datamodule.sample_inputs(capacity.importance_batches))
    cert_cfg = cfg.callbacks.certificate
    module = SurrogateModule(surrogate, taus=tuple(cert_cfg.taus_abs), **cfg.optim)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    certificate_cb = instantiate(
        cert_cfg, run_dir=cfg.run_dir, resolved_config=resolved, _recursive_=False, _convert_="all"
    )
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = instantiate(cfg.trainer, callbacks=[certificate_cb], logger=logger)
    if capacity.full_capacity:
        # the teacher block itself: certify it without training (no training pairs captured)
        trainer.validate(module, datamodule=datamodule, verbose=False)
    else:
        trainer.fit(module, datamodule=datamodule)
    certificate = certificate_cb.certificate
    if certificate is None:
        raise BlockCertError("training stopped before the certificate was written.")
    return certificate
