"""Similar texts: the lexical embedder (no model) and an exact cosine nearest-neighbour search."""

from __future__ import annotations

import re
import zlib

import numpy as np

from lmmixup.method.knn import top_k_columns
from lmmixup.mixture.config import LEXICAL
from lmmixup.types import Embedder


class LexicalEmbedder:
    """Unit vectors of hashed counts of words of four letters or more: no model to load."""

    name = LEXICAL

    def __init__(self, dim: int = 4096):
        self.dim = dim

    def encode(self, texts: list[str]) -> np.ndarray:
        """One (len(texts), dim) float32 array of unit vectors (zero rows for wordless texts)."""
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z]{4,}", text.lower()):
                vectors[row, zlib.crc32(word.encode()) % self.dim] += 1.0
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)


def load_pair_embedder(name: str) -> Embedder:
    """The embedder named in the config (`lexical` or any sentence-transformers model)."""
    if name == LEXICAL:
        return LexicalEmbedder()
    from lmmixup.backends.embed import load_embedder

    return load_embedder(name)


def nearest_neighbours(vectors: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """For each row, the indices of its `k` most similar other rows, most similar first."""
    n = len(vectors)
    k = min(k, n - 1)
    result = np.zeros((n, max(k, 0)), dtype=np.int64)
    for start in range(0, n if k > 0 else 0, block):
        sims = vectors[start : start + block] @ vectors.T
        rows = np.arange(len(sims))
        sims[rows, rows + start] = -np.inf
        result[start : start + block] = top_k_columns(sims, k)[1]
    return result
