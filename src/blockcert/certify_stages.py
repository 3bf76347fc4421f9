"""The results certify's stages hand each other: the teacher, the verified certificates, the
composed chain (blockcert.certify runs the stages; blockcert.certify_report reports them)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from blockcert.cert.fp_allowance import Allowance
from blockcert.compose.chain import Chain
from blockcert.hashing import sha256_text
from blockcert.models.adapters import BlockAdapter
from blockcert.verify.claims import VerifiedBlock


@dataclass(frozen=True)
class Teacher:
    model: object  # blockcert.models.teacher.Teacher
    adapter: BlockAdapter


@dataclass(frozen=True)
class Verified:
    """Certificates that passed hashes, IR validation and the split check."""

    blocks: dict[int, VerifiedBlock]
    heldout: torch.Tensor  # [n_prompts, seq] shared by every certificate
    recipe: dict  # the data recipe the split was rebuilt from (the first certificate's)
    fresh_pool: torch.Tensor  # recipe windows no certificate trains or evaluates on

    @property
    def first(self) -> int:
        return min(self.blocks)

    def digest(self) -> str:
        """SHA-256 over the composed certificates' own hashes, in block order."""
        return sha256_text("".join(b.sha256 for b in self.blocks.values()))


@dataclass(frozen=True)
class Composition:
    chain: Chain  # sound and empirical chains side by side; the claim is the sound one
    claimed: object  # Fraction: a short decimal >= the exact B_L
    fp_allowance: dict[int, Allowance]  # measured, already inside every composed eps_k
    n_prompts: int  # the chain covers the tubes around the first n held-out prompts
