"""Run one residual block of a teacher exactly as its HF model does (positions, mask, norms).

Residual stream convention: h_0 = embed(tokens), h_{k+1} = block_k(h_k), logits = head(h_L).
All tensors are `[batch, seq, d_model]`; every prompt starts at position 0 (no padding).
"""

from __future__ import annotations

import inspect

import torch
from transformers.masking_utils import create_causal_mask

from blockcert.models.teacher import Teacher

# transformers renamed the mask builder's cache argument (past_key_values -> cache); passing the
# old name to a new release prints a deprecation warning on every block call
_CACHE_ARG = (
    "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"
)


class BlockAdapter:
    """Family-independent access to embed / block k / head of a teacher."""

    def __init__(self, teacher: Teacher):
        self.teacher = teacher
        self.config = teacher.model.config

    @property
    def num_blocks(self) -> int:
        return self.config.num_hidden_layers

    @property
    def d_model(self) -> int:
        return self.config.hidden_size

    def positions(self, h: torch.Tensor) -> torch.Tensor:
        return torch.arange(h.shape[1], device=h.device).unsqueeze(0)

    def causal_mask(self, h: torch.Tensor, positions: torch.Tensor):
        return create_causal_mask(
            config=self.config,
            inputs_embeds=h,
            attention_mask=None,
            position_ids=positions,
            **{_CACHE_ARG: None},
        )

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def layer(self, k: int) -> torch.nn.Module:
        raise NotImplementedError

    def block(self, k: int, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head: h_L -> logits `[batch, seq, vocab]`."""
        raise NotImplementedError

    @torch.no_grad()
    def block_pair(self, input_ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_k, h_{k+1}) for block k, running only blocks 0..k."""
        h = self.embed(input_ids)
        for j in range(k):
            h = self.block(j, h)
        return h, self.block(k, h)


class LlamaAdapter(BlockAdapter):
    """Llama-family decoder (Llama, TinyLlama, SmolLM2, Mistral): RMSNorm, RoPE, GQA, SwiGLU."""

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.teacher.model.model.embed_tokens(input_ids)

    def layer(self, k: int) -> torch.nn.Module:
        return self.teacher.model.model.layers[k]

    def block(self, k: int, h: torch.Tensor) -> torch.Tensor:
        positions = self.positions(h)
        rotary = self.teacher.model.model.rotary_emb(h, position_ids=positions)
        out = self.layer(k)(
            h,
            attention_mask=self.causal_mask(h, positions),
            position_ids=positions,
            position_embeddings=rotary,
        )
        return out[0] if isinstance(out, tuple) else out

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.teacher.model.lm_head(self.teacher.model.model.norm(h))


class GPT2Adapter(BlockAdapter):
    """GPT-2: learned absolute positions added at the embedding, LayerNorm, GELU MLP."""

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        transformer = self.teacher.model.transformer
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        return transformer.wte(input_ids) + transformer.wpe(positions)

    def layer(self, k: int) -> torch.nn.Module:
        return self.teacher.model.transformer.h[k]

    def block(self, k: int, h: torch.Tensor) -> torch.Tensor:
        positions = self.positions(h)
        out = self.layer(k)(
            h, attention_mask=self.causal_mask(h, positions), position_ids=positions
        )
        return out[0] if isinstance(out, tuple) else out

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.teacher.model.lm_head(self.teacher.model.transformer.ln_f(h))


_ADAPTERS = {"llama": LlamaAdapter, "gpt2": GPT2Adapter}


def adapter_for(teacher: Teacher) -> BlockAdapter:
    return _ADAPTERS[teacher.family](teacher)
