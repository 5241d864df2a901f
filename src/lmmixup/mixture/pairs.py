"""Cross-topic pairs: sampled seeds, each paired with its most similar unpaired neighbour."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np

from lmmixup.mixture.neighbours import nearest_neighbours
from lmmixup.mixture.seeds import Seed
from lmmixup.types import Embedder

_EMBED_CHARS = 128
_NEIGHBOURS = 10


def similar_pairs(
    seeds: Sequence[Seed],
    count: int,
    embedder: Embedder,
    rng: random.Random,
    *,
    pool_factor: float,
    min_similarity: float,
) -> list[tuple[int, int, float]]:
    """Up to `count` disjoint pairs of seed indices (with their cosine similarity).

    A seeded sample of `count * 2 * pool_factor` seeds is embedded by the start of their
    prompts (what a seed is about; shorter texts embed faster). Visited in a seeded random
    order, each unpaired seed is paired with its nearest unpaired neighbour among its ten
    nearest, when their similarity reaches `min_similarity`.
    """
    size = min(len(seeds), math.ceil(count * 2 * pool_factor))
    if count == 0 or size < 2:
        return []
    pool = sorted(rng.sample(range(len(seeds)), size))
    texts = [seeds[i].prompt[:_EMBED_CHARS] for i in pool]
    vectors = np.asarray(embedder.encode(texts), dtype=np.float32)
    neighbours = nearest_neighbours(vectors, _NEIGHBOURS)
    taken: set[int] = set()
    pairs: list[tuple[int, int, float]] = []
    for a in rng.sample(range(size), size):
        if len(pairs) == count:
            break
        if a in taken:
            continue
        free = (int(b) for b in neighbours[a] if b not in taken)
        partner = next(free, None)
        similarity = -1.0 if partner is None else float(vectors[a] @ vectors[partner])
        if similarity >= min_similarity:
            taken |= {a, partner}
            pairs.append((pool[a], pool[partner], similarity))
    return pairs
