"""Rebuild a certificate's train / held-out split from its recorded recipe.

The recipe (data.recipe, already schema-checked: verify/schema.py) names one of blockcert's
corpora by a plain key with typed arguments; nothing in it is imported, instantiated or run. A
local text corpus is read only from the path the verifier gives (`text_path`), never from one
the certificate names.
"""

from __future__ import annotations

import json
from functools import lru_cache

from blockcert.capture.corpus import corpus_from_recipe
from blockcert.capture.prompts import PromptSplit, build_prompts


def rebuild_split(recipe: dict, tokenizer, text_path: str | None = None) -> PromptSplit:
    """The split that `recipe` produces with this tokenizer."""
    return _rebuild(json.dumps(recipe, sort_keys=True), tokenizer, text_path)


@lru_cache(maxsize=4)
def _rebuild(recipe_json: str, tokenizer, text_path: str | None) -> PromptSplit:
    # every certificate of one run shares its recipe: tokenise the corpus once
    recipe = json.loads(recipe_json)
    return build_prompts(
        corpus_from_recipe(recipe["corpus"], text_path),
        tokenizer,
        seq_len=recipe["seq_len"],
        n_train=recipe["n_train_prompts"],
        n_heldout=recipe["n_heldout_prompts"],
        seed=recipe["seed"],
        pool_factor=recipe["pool_factor"],
    )
