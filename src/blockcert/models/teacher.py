"""The teacher: a Hugging Face causal LM plus what a certificate needs to name it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from blockcert.hashing import tensors_sha256


@dataclass
class Teacher:
    """A loaded teacher model.

    name: config name (e.g. `smollm2`); source: where the weights came from (file path or hub id);
    family: block adapter family (`llama` or `gpt2`).
    """

    name: str
    source: str
    family: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    _weights_sha256: str | None = field(default=None, repr=False)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def weights_sha256(self) -> str:
        """SHA-256 over every named tensor as loaded (name, dtype, shape, bytes), in name order.

        Hashing the loaded tensors rather than the files makes the hash independent of the file
        format (GGUF, safetensors, random init) and recomputable from the model alone.
        """
        if self._weights_sha256 is None:
            self._weights_sha256 = tensors_sha256(self.model.state_dict())
        return self._weights_sha256

    def describe(self) -> dict[str, str]:
        return {
            "name": self.name,
            "source": self.source,
            "family": self.family,
            "dtype": str(self.dtype).removeprefix("torch."),
            "sha256": self.weights_sha256,
        }
