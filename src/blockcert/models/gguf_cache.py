"""A dequantized copy of a GGUF checkpoint, kept as an HF model directory for fast reloads.

transformers reads a GGUF file three times per load (config, tokenizer, weights), parsing its
metadata (a 49k-entry vocabulary for SmolLM2) and dequantizing every tensor: ≈15 s on two
cores, paid by train.py and again by certify.py. The first load writes what it built with
`save_pretrained` (safetensors weights in the loaded dtype, config, tokenizer files) into
`<cache_dir>/<sha256 of the GGUF file>-<dtype>/`; later loads read that directory instead.

The directory is named by the GGUF's content hash, so another file never hits it, and is
written to a temporary sibling and renamed into place, so a reader never sees half of it. The
teacher's identity in a certificate is the hash of the loaded tensors (Teacher.weights_sha256),
which the copy reproduces bit for bit; the conversion is lossless (same dtype, same tensors).
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import save_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from blockcert.hashing import sha256_file

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

log = logging.getLogger(__name__)


def converted_dir(cache_dir: str | Path, gguf: Path, dtype: str) -> Path:
    """Where the converted copy of `gguf` in `dtype` lives (whether or not it exists yet)."""
    return Path(cache_dir).expanduser() / f"{sha256_file(gguf)}-{dtype}"


def load_converted(directory: Path, torch_dtype):
    """(model, tokenizer) from a converted directory; safetensors only (nothing unpickled)."""
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    model = AutoModelForCausalLM.from_pretrained(
        str(directory), dtype=torch_dtype, use_safetensors=True
    )
    return model, tokenizer


def save_converted(directory: Path, model, tokenizer) -> None:
    """Write (model, tokenizer) to `directory` atomically: a temporary sibling, then a rename."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        # save_pretrained refuses a model loaded from GGUF (it carries the GGUF quantizer);
        # the tensors are plain dequantized ones, so write them and a config without it
        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(str(staging))
        save_model(model, str(staging / WEIGHTS_FILE))  # tied tensors stored once
        tokenizer.save_pretrained(str(staging))
        try:
            os.rename(staging, directory)
        except OSError:
            # a concurrent writer finished first, or something else occupies the name: the
            # model in hand is still the right one, only the copy for next time is lost
            if not (directory / CONFIG_FILE).is_file():
                log.warning("could not keep the converted model in %s", directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_through_cache(
    cache_dir: str | Path | None,
    gguf: Path,
    dtype: str,
    torch_dtype,
    load_gguf: Callable[[], tuple],
):
    """(model, tokenizer): from the converted copy when there is one, else `load_gguf()`
    (then the copy is written for next time). cache_dir None: always from the GGUF."""
    if cache_dir is None:
        return load_gguf()
    directory = converted_dir(cache_dir, gguf, dtype)
    if (directory / CONFIG_FILE).is_file():
        return load_converted(directory, torch_dtype)
    model, tokenizer = load_gguf()
    save_converted(directory, model, tokenizer)
    return model, tokenizer
