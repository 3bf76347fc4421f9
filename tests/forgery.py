"""A forger's tools: edit a copy of a real run, re-hash every file and re-seal the certificate,
as someone who controls the run directory would (certify it with tests.helpers)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from blockcert.cert.certificate import CERTIFICATE_FILE, seal, write_certificate
from blockcert.hashing import sha256_file, token_ids_sha256
from blockcert.surrogate.ir import GRAPH_FILE, WEIGHTS_FILE

TOKENS_FILE = "heldout_tokens.safetensors"
TINY_TRAIN = [  # on top of debug=tiny: a reduced block (coverage counts differ across tau)
    "block=1",
    "surrogate.head_fraction=0.5",
    "surrogate.mlp_fraction=0.5",
    "callbacks.certificate.taus_abs=[0.02,0.05,0.1,1.0]",
    "lipschitz.empirical_prompts=2",
]


def read_certificate(run: Path) -> dict:
    return json.loads((run / CERTIFICATE_FILE).read_text())


def reseal(run: Path, graph=None, weights=None, tokens=None, cert=None) -> None:
    """Apply the edits (each a function that edits in place or returns the new value), re-hash
    every file and re-seal the certificate."""
    certificate = read_certificate(run)
    if graph is not None:
        data = json.loads((run / GRAPH_FILE).read_text())
        graph(data)
        (run / GRAPH_FILE).write_text(json.dumps(data))
    if weights is not None:
        tensors = load_file(str(run / WEIGHTS_FILE))
        weights(tensors)
        save_file(tensors, str(run / WEIGHTS_FILE))
    if tokens is not None:
        ids = tokens(load_file(str(run / TOKENS_FILE))["input_ids"])
        save_file({"input_ids": ids.contiguous()}, str(run / TOKENS_FILE))
        data = certificate["data"]
        data.update(sha256=token_ids_sha256(ids), n_prompts=ids.shape[0], n_tokens=ids.numel())
    if (run / TOKENS_FILE).is_file():
        certificate["data"]["tokens_file_sha256"] = sha256_file(run / TOKENS_FILE)
    for name in (GRAPH_FILE, WEIGHTS_FILE):
        if (run / name).is_file() and isinstance(certificate["surrogate"].get("files"), dict):
            certificate["surrogate"]["files"][name] = sha256_file(run / name)
    if cert is not None:
        cert(certificate)
    body = {k: v for k, v in certificate.items() if k != "certificate_sha256"}
    write_certificate(run, seal(body))
