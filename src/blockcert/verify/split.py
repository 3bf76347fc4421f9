"""Rebuild a certificate's train / held-out split from its recorded recipe.

The recipe names a corpus class and its arguments; it comes from an untrusted file, so only the
project's own corpus classes may be built from it (no arbitrary `_target_`).
"""

from __future__ import annotations

import json
from functools import lru_cache

from hydra.utils import instantiate

from blockcert.capture.prompts import PromptSplit, build_prompts
from blockcert.errors import VerificationError

CORPUS_TARGETS = frozenset(
    f"blockcert.capture.corpus.{name}"
    for name in ("ShakespeareCorpus", "TextFileCorpus", "HFDatasetCorpus")
)


def rebuild_split(recipe: dict, tokenizer, where: str) -> PromptSplit:
    """The split that `recipe` (data.recipe of a certificate) produces with this tokenizer."""
    corpus = recipe.get("corpus") if isinstance(recipe, dict) else None
    if not isinstance(corpus, dict) or corpus.get("_target_") not in CORPUS_TARGETS:
        raise VerificationError(
            f"{where}: field data.recipe.corpus does not name one of blockcert's corpora; the "
            "held-out split cannot be rebuilt."
        )
    return _rebuild(json.dumps(recipe, sort_keys=True), tokenizer)


@lru_cache(maxsize=4)
def _rebuild(recipe_json: str, tokenizer) -> PromptSplit:
    # every certificate of one run shares its recipe: tokenise the corpus once
    recipe = json.loads(recipe_json)
    return build_prompts(
        instantiate(recipe["corpus"]),
        tokenizer,
        seq_len=recipe["seq_len"],
        n_train=recipe["n_train_prompts"],
        n_heldout=recipe["n_heldout_prompts"],
        seed=recipe["seed"],
    )
