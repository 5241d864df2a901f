"""Sentence embedders: unit-normalised float32 vectors from any sentence-transformers model."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from lmmixup.assets import resolve_model
from lmmixup.progress import progress


class Embedder:
    """Wraps a SentenceTransformer; `encode` returns an (n, d) float32 array of unit vectors."""

    def __init__(self, name: str, device: str | None = None):
        from sentence_transformers import SentenceTransformer

        self.name = name
        self.model = SentenceTransformer(resolve_model(name), device=device or "cpu")
        self.dim = self.model.get_embedding_dimension()

    def encode(
        self, texts: list[str], batch_size: int = 64, description: str | None = None
    ) -> np.ndarray:
        """Embed texts in batches (sorted by length inside sentence-transformers)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = []
        step = max(batch_size * 8, 256)
        with progress(description or f"embed ({self.name})", len(texts), unit="text") as advance:
            for start in range(0, len(texts), step):
                part = texts[start : start + step]
                chunks.append(
                    self.model.encode(
                        part,
                        batch_size=batch_size,
                        normalize_embeddings=True,
                        convert_to_numpy=True,
                    )
                )
                advance(len(part))
        return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)


@lru_cache(maxsize=4)
def load_embedder(name: str) -> Embedder:
    """One embedder per model name per process (loading takes seconds)."""
    return Embedder(name)


def record_text(record: dict) -> str:
    """The text a pool record is embedded by: prompt, newline, completion."""
    return f"{record['prompt']}\n{record['completion']}"
