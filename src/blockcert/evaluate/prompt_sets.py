"""The verifier's own prompts: a text file, a JSON list, a directory, a corpus, or `stress`.

Sources (`load_prompt_set(spec, ...)`):
  `stress`          the built-in stress set shipped with the package (stress_prompts.json);
  `*.json`          a JSON list of strings, one prompt each;
  a directory       every `*.txt` file under it (sorted), one prompt per file;
  any other file    UTF-8 text, one prompt per non-blank line;
  a data config     a mapping with `corpus` (as in conf/data/*.yaml): its held-out windows.
Prompts keep their own lengths (no padding); one longer than the model's context is cut to it
with a warning. An empty or undecodable source is a BlockCertError (exit 2).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from blockcert.capture.prompts import build_prompts, encode_prompt
from blockcert.errors import BlockCertError

log = logging.getLogger(__name__)

STRESS = "stress"
STRESS_FILE = "stress_prompts.json"


@dataclass(frozen=True)
class PromptSet:
    """ids[i]: `[len_i]` int64 token ids of prompt i; labels[i]: its category or origin."""

    name: str
    ids: list[torch.Tensor]
    labels: list[str]
    source: dict[str, str]
    n_truncated: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_tokens(self) -> int:
        return sum(len(p) for p in self.ids)

    @property
    def sha256(self) -> str:
        """SHA-256 over every prompt's length and int64 ids, in order."""
        digest = hashlib.sha256(f"ragged-int64:{len(self.ids)}".encode())
        for ids in self.ids:
            digest.update(f"|{len(ids)}|".encode())
            digest.update(ids.to(torch.int64).contiguous().numpy().tobytes())
        return digest.hexdigest()

    def categories(self) -> dict[str, list[int]]:
        """Prompt indices per label, in first-seen order."""
        groups: dict[str, list[int]] = {}
        for i, label in enumerate(self.labels):
            groups.setdefault(label, []).append(i)
        return groups


def context_length(model_config) -> int | None:
    """Longest sequence the model's positions allow (None if the config does not say)."""
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(model_config, key, None)
        if value:
            return int(value)
    return None


def stress_texts(tokenizer) -> tuple[list[str], list[str]]:
    """(texts, categories) of the built-in stress set; chat prompts use the tokenizer's template."""
    data = json.loads(
        resources.files("blockcert.evaluate").joinpath(STRESS_FILE).read_text(encoding="utf-8")
    )
    texts, labels = [], []
    for category, entry in data["categories"].items():
        texts += entry["prompts"]
        labels += [category] * len(entry["prompts"])
    if getattr(tokenizer, "chat_template", None):
        for messages in data["chat"]["conversations"]:
            texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
            labels.append("chat")
    else:
        log.warning("stress prompts: the tokenizer has no chat template; category 'chat' skipped.")
    return texts, labels


def stress_descriptions() -> dict[str, str]:
    """What each stress category probes, for reports and the README."""
    data = json.loads(
        resources.files("blockcert.evaluate").joinpath(STRESS_FILE).read_text(encoding="utf-8")
    )
    return {
        **{name: entry["probes"] for name, entry in data["categories"].items()},
        "chat": data["chat"]["probes"],
    }


def _read_utf8(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise BlockCertError(
            f"prompts={path}: not UTF-8 text (invalid byte at offset {err.start}); save it as "
            "UTF-8."
        ) from None


def _texts_from_path(path: Path) -> tuple[list[str], list[str]]:
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        texts = [_read_utf8(f) for f in files]
        pairs = [(t, f.name) for t, f in zip(texts, files, strict=True) if t.strip()]
    elif not path.is_file():
        raise BlockCertError(f"prompts={path}: no such file or directory.")
    elif path.suffix == ".json":
        try:
            items = json.loads(_read_utf8(path))
        except json.JSONDecodeError as err:
            raise BlockCertError(
                f"prompts={path}: invalid JSON ({err.msg}, line {err.lineno})."
            ) from None
        if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
            raise BlockCertError(f"prompts={path}: a JSON prompt file must be a list of strings.")
        pairs = [(t, f"{path.name}[{i}]") for i, t in enumerate(items) if t.strip()]
    else:
        lines = _read_utf8(path).splitlines()
        pairs = [(t, f"{path.name}:{i + 1}") for i, t in enumerate(lines) if t.strip()]
    if not pairs:
        raise BlockCertError(f"prompts={path}: no prompts in it (empty or blank only).")
    return [t for t, _ in pairs], [label for _, label in pairs]


def _cut(ids: list[int], max_len: int | None, label: str) -> tuple[list[int], bool]:
    if max_len is None or len(ids) <= max_len:
        return ids, False
    log.warning(
        "prompt %s has %d tokens, more than the model's context of %d: cut to %d.",
        label,
        len(ids),
        max_len,
        max_len,
    )
    return ids[:max_len], True


def tokenize_prompts(
    name: str, texts: list[str], labels: list[str], tokenizer, max_len: int | None, source: dict
) -> PromptSet:
    """Tokenise each text on its own (no padding); cut any prompt longer than `max_len`."""
    ids, kept, cut = [], [], 0
    for text, label in zip(texts, labels, strict=True):
        tokens, was_cut = _cut(encode_prompt(tokenizer, text), max_len, label)
        cut += was_cut
        if tokens:
            ids.append(torch.tensor(tokens, dtype=torch.int64))
            kept.append(label)
    if not ids:
        raise BlockCertError(f"prompts={name}: every prompt tokenises to nothing.")
    return PromptSet(name, ids, kept, source, cut)


def _from_data_config(data: Mapping, tokenizer, max_len: int | None) -> PromptSet:
    from hydra.utils import instantiate

    corpus = instantiate(data["corpus"])
    split = build_prompts(
        corpus,
        tokenizer,
        seq_len=min(data["seq_len"], max_len or data["seq_len"]),
        n_train=data["n_train_prompts"],
        n_heldout=data["n_heldout_prompts"],
        seed=data.get("seed", 0),
    )
    source = corpus.describe()
    name = source["source"]
    return PromptSet(name, list(split.heldout), [name] * len(split.heldout), source)


def load_prompt_set(spec, tokenizer, max_len: int | None) -> PromptSet:
    """The prompt set named by `spec` (see the module docstring), tokenised."""
    if isinstance(spec, Mapping):
        if "corpus" not in spec:
            raise BlockCertError("prompts: a mapping must be a data config with a `corpus` key.")
        return _from_data_config(spec, tokenizer, max_len)
    spec = str(spec)
    if spec == STRESS:
        texts, labels = stress_texts(tokenizer)
        source = {"source": f"blockcert built-in stress set ({STRESS_FILE})", "licence": "MIT"}
        return tokenize_prompts(STRESS, texts, labels, tokenizer, max_len, source)
    path = Path(spec).expanduser()
    texts, labels = _texts_from_path(path)
    source = {"source": f"file:{path}", "licence": "user-supplied"}
    return tokenize_prompts(str(path), texts, labels, tokenizer, max_len, source)
