"""The vectors the distiller's drift check compares: each pair's and its members'.

A member's vector comes from the embeddings the cluster stage saved (`io.vectors`) where its
text is unchanged; everything else is embedded, in one call for a whole batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lmmixup.io.vectors import SavedVectors
from lmmixup.types import Embedder

Draft = tuple[str | None, Sequence[Mapping[str, Any]], Sequence[str]]
"""A pair's text (None: no pair), its cluster's member records and their texts."""


def pair_and_member_vectors(
    drafts: Sequence[Draft], embedder: Embedder, saved: SavedVectors | None = None
) -> list[np.ndarray | None]:
    """Vectors (pair first, then members) for each draft with a pair, None for the others;
    one encode call for the pairs and the members without a `saved` vector."""
    texts: list[str] = []
    plans: list[list[int | np.ndarray] | None] = []
    for text, members, member_texts in drafts:
        if text is None:
            plans.append(None)
            continue
        plan: list[int | np.ndarray] = [len(texts)]
        texts.append(text)
        for member, member_text in zip(members, member_texts, strict=True):
            vector = None if saved is None else saved.get(member["id"], member_text)
            plan.append(len(texts) if vector is None else vector)
            if vector is None:
                texts.append(member_text)
        plans.append(plan)
    vectors = embedder.encode(texts) if texts else None
    return [
        None if plan is None else np.stack([vectors[p] if isinstance(p, int) else p for p in plan])
        for plan in plans
    ]
