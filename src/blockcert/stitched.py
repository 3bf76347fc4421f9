"""A stitched transformers model: certified blocks run their surrogate IR, the rest the teacher.

    model, tokenizer = blockcert.stitched.load("runs/smollm2", model="smollm2")
    model.generate(**tokenizer("To be, or not", return_tensors="pt"), max_new_tokens=20)

`load` collects the newest certificate per block under `runs` (as certify.py does), verifies
each with blockcert.verify.claims.verify_artifacts (certificate hash, teacher weights hash, IR
and weights hashes, the IR validated against its family template, claimed params and capacity;
the held-out token file) and replaces decoder layer k of the teacher's HF model by a
`SurrogateLayer` running `run_graph` of block k's IR: h_{k+1} = g_k(h_k), exactly what the
stitched evaluation of blockcert.evaluate.trajectory computes. eps_max is not recomputed here
(certify.py does that); the surrogates are the certified ones byte for byte.

The IR runs whole unpadded prompts from position 0 with causal attention and no KV cache, so the
stitched model is set to `use_cache=False`: generate() recomputes the prefix at every step.
A SurrogateLayer refuses (BlockCertError) a KV cache, positions not starting at 0, and an
attention mask other than the plain causal one (left padding): it would silently differ there.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from blockcert.errors import BlockCertError
from blockcert.models.adapters import adapter_for
from blockcert.models.load import load_teacher_by_name
from blockcert.models.teacher import Teacher
from blockcert.surrogate.interpret import run_graph
from blockcert.surrogate.ir import Surrogate
from blockcert.verify.claims import TeacherFacts, blame, verify_artifacts
from blockcert.verify.collect import certificates_per_block


class SurrogateLayer(nn.Module):
    """Drop-in for a HF decoder layer: hidden [b, s, d] -> g_k(hidden) (the layer call signature
    of transformers 5: hidden_states first, the rest as keywords; returns a tensor)."""

    def __init__(self, surrogate: Surrogate, block: int):
        super().__init__()
        self.graph, self.block = surrogate.graph, block
        for i, (_, tensor) in enumerate(sorted(surrogate.weights.items())):
            self.register_buffer(f"w{i}", tensor.detach().clone())
        self.keys = sorted(surrogate.weights)

    def weights(self) -> dict[str, torch.Tensor]:
        return {key: getattr(self, f"w{i}") for i, key in enumerate(self.keys)}

    def _check(self, hidden: torch.Tensor, kwargs: Mapping) -> None:
        # the cache keyword by transformers release: cache (5.x), past_key_values, layer_past
        cache = next(
            (kwargs[k] for k in ("cache", "past_key_values", "layer_past") if kwargs.get(k)), None
        )
        if kwargs.get("use_cache") or (cache is not None and cache.get_seq_length() > 0):
            raise BlockCertError(
                f"block {self.block} runs a surrogate without KV cache; call the stitched model "
                "with use_cache=False (load() sets it for generate())."
            )
        positions = kwargs.get("position_ids")
        s = hidden.shape[1]
        if positions is not None and not torch.equal(
            positions, torch.arange(s, device=positions.device).expand_as(positions)
        ):
            raise BlockCertError(
                f"block {self.block} runs a surrogate on unpadded prompts from position 0; "
                "pass one prompt (or equal-length prompts) without padding."
            )
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 4:
            causal = torch.ones(s, s, dtype=torch.bool, device=mask.device).tril()
            allowed = mask if mask.dtype == torch.bool else mask == 0
            if not torch.equal(allowed[..., -s:, -s:], causal.expand_as(allowed[..., -s:, -s:])):
                raise BlockCertError(
                    f"block {self.block} runs a surrogate with a plain causal mask; the "
                    "attention mask given has padding."
                )

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        self._check(hidden_states, kwargs)
        weights = {k: v.to(hidden_states.dtype) for k, v in self.weights().items()}
        return run_graph(self.graph, weights, hidden_states)


def stitch(teacher: Teacher, surrogates: Mapping[int, Surrogate]) -> nn.Module:
    """The teacher's HF model with decoder layer k replaced by surrogate k (in place)."""
    adapter = adapter_for(teacher)
    container = (
        teacher.model.model.layers if teacher.family == "llama" else teacher.model.transformer.h
    )
    for k, surrogate in surrogates.items():
        if not 0 <= k < adapter.num_blocks:
            raise BlockCertError(f"block {k} is not a block of {teacher.name}.")
        container[k] = SurrogateLayer(surrogate, k)
    model = teacher.model
    model.config.use_cache = False
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.use_cache = False
    model.eval()
    return model


def verified_surrogates(teacher: Teacher, runs: str | Path) -> dict[int, Surrogate]:
    """{block: surrogate} of the newest certificate per block under `runs`, each verified."""
    chosen = certificates_per_block(runs, teacher.name)
    facts = TeacherFacts.of(teacher)
    surrogates = {}
    for k, (path, certificate) in chosen.items():
        with blame(path):
            surrogates[k] = verify_artifacts(path, certificate, facts).surrogate
    return surrogates


def load(runs: str | Path, model: str | Teacher = "smollm2", overrides: tuple[str, ...] = ()):
    """(stitched HF model, tokenizer): verified surrogates of `runs` in the teacher `model`
    (a conf/model name or a loaded Teacher, which is modified in place)."""
    teacher = model if isinstance(model, Teacher) else load_teacher_by_name(model, overrides)
    surrogates = verified_surrogates(teacher, runs)
    return stitch(teacher, surrogates), teacher.tokenizer
