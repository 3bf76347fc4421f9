"""Surrogate IR: a small typed op graph (JSON) plus its weights (safetensors).

A graph reads the block input `x` `[batch, seq, d_model]` and writes `out`. Each node names its
op, its input values, its weights (role -> tensor key) and its attributes. The ops are listed
in `blockcert.surrogate.interpret.OPS`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from blockcert.atomic import write_atomic, write_text_atomic
from blockcert.errors import BlockCertError
from blockcert.hashing import sha256_file

IR_SCHEMA_VERSION = 1
GRAPH_FILE = "surrogate.json"
WEIGHTS_FILE = "surrogate.safetensors"


@dataclass
class Node:
    op: str
    inputs: list[str]
    output: str
    weights: dict[str, str] = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)


@dataclass
class Graph:
    """family: `llama` or `gpt2`; capacity: the knobs that produced it (kept heads etc.)."""

    family: str
    d_model: int
    nodes: list[Node]
    capacity: dict = field(default_factory=dict)
    input: str = "x"
    output: str = "out"
    schema_version: int = IR_SCHEMA_VERSION

    def node(self, output: str) -> Node:
        for node in self.nodes:
            if node.output == output:
                return node
        raise KeyError(output)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Graph:
        data = json.loads(text)
        if data.get("schema_version") != IR_SCHEMA_VERSION:
            raise BlockCertError(
                f"surrogate IR schema {data.get('schema_version')} is not {IR_SCHEMA_VERSION}."
            )
        data["nodes"] = [Node(**node) for node in data["nodes"]]
        return cls(**data)


@dataclass
class Surrogate:
    graph: Graph
    weights: dict[str, torch.Tensor]

    @property
    def num_params(self) -> int:
        return sum(w.numel() for w in self.weights.values())


def save_surrogate(surrogate: Surrogate, directory: str | Path) -> dict[str, str]:
    """Write graph JSON and weights atomically; return {file: sha256}."""
    directory = Path(directory)
    weights = {k: v.detach().float().contiguous().cpu() for k, v in surrogate.weights.items()}
    write_atomic(directory / WEIGHTS_FILE, lambda tmp: save_file(weights, str(tmp)))
    write_text_atomic(directory / GRAPH_FILE, surrogate.graph.to_json())
    return {name: sha256_file(directory / name) for name in (GRAPH_FILE, WEIGHTS_FILE)}


def load_surrogate(directory: str | Path) -> Surrogate:
    directory = Path(directory)
    try:
        graph = Graph.from_json((directory / GRAPH_FILE).read_text())
        weights = load_file(str(directory / WEIGHTS_FILE))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BlockCertError(f"cannot read the surrogate IR in {directory}: {err}") from None
    return Surrogate(graph, weights)
