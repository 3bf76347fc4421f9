"""Facts to write into a block, and their tokenised queries.

A fact (s, r, o*) is given as a prompt that names the subject s and ends where the object is
due ("The Eiffel Tower is located in the city of"), a target continuation o* (" Rome"), the
subject string (the key is read at its last token; default: the prompt's last token) and
paraphrases of the prompt (generalisation). A query is one tokenised sequence
`[context] + prompt + target[:-1]`: teacher forcing scores every target token, and the key
position is where the edited MLP must fire.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from blockcert.errors import BlockCertError


@dataclass(frozen=True)
class Fact:
    prompt: str
    target: str
    subject: str | None = None
    paraphrases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Query:
    """ids: the whole sequence; key_pos: subject's last token; answer_pos: where target[0]
    is predicted (the prompt's last token); target: the target token ids."""

    ids: tuple[int, ...]
    key_pos: int
    answer_pos: int
    target: tuple[int, ...]


def facts_from(edit_cfg) -> list[Fact]:
    """Facts from `edit.prompt/target/subject/paraphrases` and/or the list `edit.facts`."""
    items = [dict(f) for f in edit_cfg.get("facts") or []]
    if edit_cfg.get("prompt") is not None or edit_cfg.get("target") is not None:
        items.insert(
            0,
            {
                "prompt": edit_cfg.get("prompt"),
                "target": edit_cfg.get("target"),
                "subject": edit_cfg.get("subject"),
                "paraphrases": edit_cfg.get("paraphrases") or [],
            },
        )
    if not items:
        raise BlockCertError(
            'nothing to edit: pass edit.prompt="..." edit.target="..." or edit.facts=[...].'
        )
    facts = []
    for item in items:
        prompt, target = item.get("prompt"), item.get("target")
        if not prompt or not target:
            raise BlockCertError(f"every fact needs a non-empty prompt and target; got {item}.")
        subject = item.get("subject") or None
        if subject is not None and subject not in prompt:
            raise BlockCertError(f"edit subject {subject!r} does not occur in {prompt!r}.")
        facts.append(Fact(prompt, target, subject, tuple(item.get("paraphrases") or ())))
    return facts


def encode_query(
    tokenizer, prompt: str, target: str, subject: str | None, context: str = ""
) -> Query:
    """Tokenise `context + prompt` then append the target ids (as ROME does)."""
    ids = tokenizer(context + prompt).input_ids
    target_ids = tokenizer(target, add_special_tokens=False).input_ids
    if not target_ids:
        raise BlockCertError(f"edit target {target!r} tokenises to nothing.")
    if subject is None or subject not in prompt:
        key_pos = len(ids) - 1
    else:
        # the subject's last token is the last token of the text up to the subject's end
        end = prompt.index(subject) + len(subject)
        key_pos = min(len(tokenizer(context + prompt[:end]).input_ids), len(ids)) - 1
    return Query(tuple(ids + target_ids[:-1]), key_pos, len(ids) - 1, tuple(target_ids))


def pad_right(queries: Sequence[Query], pad_id: int = 0) -> torch.Tensor:
    """`[n, T]` int64 ids. Right padding is exact for a causal model: no real token attends to
    a later position, so positions before the padding compute what they would alone."""
    width = max(len(q.ids) for q in queries)
    rows = [list(q.ids) + [pad_id] * (width - len(q.ids)) for q in queries]
    return torch.tensor(rows, dtype=torch.int64)
