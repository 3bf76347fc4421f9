"""CertificateCallback: at the end of fit, certify the trained surrogate on held-out prompts.

Writes, each atomically, into the run directory: the surrogate IR (surrogate.json +
surrogate.safetensors), the held-out token ids, and certificate.json; then logs the
certificate to W&B (artifact + summary) when a W&B logger is attached.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from safetensors.torch import save_file

from blockcert.atomic import write_atomic
from blockcert.cert.certificate import (
    CERTIFICATE_FILE,
    TOKENS_FILE,
    code_version,
    lipschitz_claim,
    seal,
    write_certificate,
)
from blockcert.cert.lipschitz import empirical_lipschitz, not_computed, sound_lipschitz
from blockcert.cert.metrics import measure_errors
from blockcert.cli import check_count
from blockcert.hashing import sha256_file, token_ids_sha256
from blockcert.surrogate.ir import GRAPH_FILE, WEIGHTS_FILE, save_surrogate
from blockcert.surrogate.view import block_view
from blockcert.tracking import coverage_key, log_files

log = logging.getLogger(__name__)


class CertificateCallback(L.Callback):
    def __init__(
        self,
        run_dir: str,
        taus_abs: list[float],
        taus_rel: list[float],
        delta: float = 0.05,
        radius: float | None = None,
        lipschitz_prompts: int = 4,
        lipschitz_search: dict | None = None,
        resolved_config: dict | None = None,
        sound_prompts: int | None = None,
        refine_tokens: int | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.taus_abs, self.taus_rel, self.delta = list(taus_abs), list(taus_rel), delta
        self.radius, self.lipschitz_prompts = radius, lipschitz_prompts
        # the empirical search at train time is informational: certify.py recomputes it
        self.lipschitz_search = dict(lipschitz_search or {})
        self.sound_prompts, self.refine_tokens = sound_prompts, refine_tokens
        self.config = resolved_config or {}
        self.certificate: dict | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._certify(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # trainer.validate() certifies an untrained (e.g. full-capacity) surrogate
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._certify(trainer, pl_module)

    def certify_as_is(self, trainer: L.Trainer, pl_module, datamodule) -> None:
        """Certify an untrained (e.g. full-capacity) surrogate without a validation loop: the
        certificate measures every held-out token itself, a loop would be a second pass."""
        for logger in trainer.loggers:
            logger.log_hyperparams(pl_module.hparams)
        self._certify(trainer, pl_module, datamodule)

    def _certify(self, trainer: L.Trainer, pl_module: L.LightningModule, datamodule=None) -> None:
        self.certificate = certify_block(
            surrogate=pl_module.surrogate(),
            datamodule=datamodule or trainer.datamodule,
            run_dir=self.run_dir,
            taus_abs=self.taus_abs,
            taus_rel=self.taus_rel,
            delta=self.delta,
            radius=self.radius,
            lipschitz_prompts=self.lipschitz_prompts,
            config=self.config,
            lipschitz_search=self.lipschitz_search,
            sound_prompts=self.sound_prompts,
            refine_tokens=self.refine_tokens,
        )
        log_to_wandb(trainer, self.certificate, self.run_dir)


def check_certificate_options(options) -> None:
    """callbacks.certificate's prompt counts: integers >= 0 (0: that constant is not computed
    at train time; sound_prompts may be null: every held-out prompt). One line otherwise."""
    for key, nullable in (("lipschitz_prompts", False), ("sound_prompts", True)):
        hint = "0: not computed at train time" + ("; null: every prompt" if nullable else "")
        check_count(f"callbacks.certificate.{key}", options.get(key), nullable, 0, hint)


def _sound_inputs(datamodule, n_prompts: int | None):
    """Held-out input batches, cut after n_prompts prompts (None: all)."""
    left = n_prompts
    for x, _ in datamodule.heldout_pairs():
        if left is not None:
            if left <= 0:
                return
            x = x[:left]
            left -= len(x)
        yield x


def _lipschitz_inputs(datamodule, n_prompts: int) -> torch.Tensor:
    batches, count = [], 0
    for x_in, _ in datamodule.heldout_pairs():
        batches.append(x_in)
        count += len(x_in)
        if count >= n_prompts:
            break
    return torch.cat(batches)[:n_prompts]


def certify_block(
    surrogate,
    datamodule,
    run_dir: Path,
    taus_abs: list[float],
    taus_rel: list[float],
    delta: float,
    radius: float | None,
    lipschitz_prompts: int,
    config: dict,
    lipschitz_search: dict | None = None,
    sound_prompts: int | None = None,
    refine_tokens: int | None = None,
) -> dict:
    """Measure, hash and write the certificate of `surrogate` for `datamodule.block`.

    sound_prompts: the sound constant over the first N held-out prompts only (None: all). It is
    informational either way (certify.py recomputes it on every evaluated prompt) and costs
    about a second per prompt, so whole-model runs may cut it; the count is in its parts.
    refine_tokens: tokens per prompt whose MLP bound uses the spectral norm (None: all that can
    decide the max). sound_prompts = 0 or lipschitz_prompts = 0: that constant is not computed
    (value None, the reason in its parts), e.g. for a whole-model run that certify.py composes.
    """
    # train.py checks these before the teacher loads; edit.py and recertify come here directly
    check_certificate_options(
        {"lipschitz_prompts": lipschitz_prompts, "sound_prompts": sound_prompts}
    )
    teacher = datamodule.adapter.teacher
    heldout = datamodule.prompts.heldout
    block_view(surrogate)  # never certify a graph the verifier would reject
    files = save_surrogate(surrogate, run_dir)
    write_atomic(
        run_dir / TOKENS_FILE, lambda tmp: save_file({"input_ids": heldout.contiguous()}, str(tmp))
    )
    report = measure_errors(surrogate, datamodule.heldout_pairs(), taus_abs, taus_rel, delta)
    # The tube radius defaults to this block's own eps_max: the deviation one upstream block of
    # similar quality would feed in. certify.py recomputes L at the composed radius.
    tube = radius if radius is not None else max(report.eps_max, 1e-6)
    if sound_prompts == 0:
        sound = not_computed("sound", tube)
    else:
        sound_inputs = _sound_inputs(datamodule, sound_prompts)
        sound = sound_lipschitz(surrogate, sound_inputs, tube, refine_tokens=refine_tokens)
    if lipschitz_prompts == 0:
        empirical = not_computed("empirical", tube)
    else:
        empirical = empirical_lipschitz(
            surrogate,
            _lipschitz_inputs(datamodule, lipschitz_prompts),
            tube,
            **(lipschitz_search or {}),
        )
    capacity = dict(surrogate.graph.capacity)
    body = {
        "model": teacher.describe(),
        "block": datamodule.block,
        "surrogate": {
            "family": surrogate.graph.family,
            "capacity": capacity,
            "params": surrogate.num_params,
            "teacher_params": capacity.get("teacher_params"),
            "files": {GRAPH_FILE: files[GRAPH_FILE], WEIGHTS_FILE: files[WEIGHTS_FILE]},
        },
        "data": {
            **datamodule.prompts.source,
            "split": "heldout",
            "n_prompts": report.n_prompts,
            "n_tokens": report.n_tokens,
            "seq_len": datamodule.prompts.seq_len,
            "tokens_file": TOKENS_FILE,
            "tokens_file_sha256": sha256_file(run_dir / TOKENS_FILE),
            "sha256": token_ids_sha256(heldout),
            "train_sha256": token_ids_sha256(datamodule.prompts.train),
            "n_train_prompts": len(datamodule.prompts.train),
            "pairs_source": datamodule.pairs_source,
            "recipe": datamodule.prompts.recipe,
        },
        "metrics": report.to_dict(),
        "lipschitz": {"sound": lipschitz_claim(sound), "empirical": lipschitz_claim(empirical)},
        "code": code_version(),
        "config": config,
    }
    certificate = seal(body)
    write_certificate(run_dir, certificate)
    log.info("certificate written to %s", run_dir / CERTIFICATE_FILE)
    return certificate


def log_to_wandb(trainer: L.Trainer, certificate: dict, run_dir: Path) -> None:
    """Certificate summary + artifact on every attached W&B logger's run."""
    from lightning.pytorch.loggers import WandbLogger

    metrics = certificate["metrics"]
    summary = {f"cert/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
    summary.update({f"cert/coverage_{coverage_key(c)}": c["fraction"] for c in metrics["coverage"]})
    for kind, lip in certificate["lipschitz"].items():
        if lip["value"] is not None:
            summary[f"cert/lipschitz_{kind}"] = lip["value"]
    summary["cert/params"] = certificate["surrogate"]["params"]
    files = [run_dir / name for name in (CERTIFICATE_FILE, GRAPH_FILE, WEIGHTS_FILE, TOKENS_FILE)]
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            log_files(
                f"certificate-block{certificate['block']}",
                "certificate",
                files,
                summary,
                run=logger.experiment,
                metadata={"certificate_sha256": certificate["certificate_sha256"]},
            )
