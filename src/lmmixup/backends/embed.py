"""Sentence embedders: unit-normalised float32 vectors from any sentence-transformers model."""

from __future__ import annotations

import threading
from collections import OrderedDict
from contextlib import nullcontext
from functools import lru_cache

import numpy as np

from lmmixup.backends.device import resolve_device
from lmmixup.io.assets import resolve_model
from lmmixup.progress import progress

CPU_BATCH, GPU_BATCH = 64, 512


class SentenceEmbedder:
    """Wraps a SentenceTransformer; `encode` returns an (n, d) float32 array of unit vectors.

    Implements the :class:`lmmixup.types.Embedder` protocol.

    Small calls remember their texts (the last `memory` of them), so rewards that embed the
    same completions one after another (quality, then alignment) pay once. `device`: auto
    (CUDA when present, else MPS, else CPU), cpu, cuda or mps.
    """

    def __init__(self, name: str, device: str = "auto", memory: int = 4096):
        from sentence_transformers import SentenceTransformer

        self.name = name
        self.device = resolve_device(device)
        self.model = SentenceTransformer(resolve_model(name), device=self.device)
        self.dim = self.model.get_embedding_dimension()
        self.batch_size = GPU_BATCH if self.device != "cpu" else CPU_BATCH
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._memory_size = memory
        self._lock = threading.Lock()

    def encode(
        self, texts: list[str], batch_size: int | None = None, description: str | None = None
    ) -> np.ndarray:
        """Embed texts; small calls reuse remembered vectors, bulk calls embed everything.
        `batch_size` defaults to the device's (larger on a GPU). Thread-safe: calls from
        several threads take turns (the tokenizer and the memory are shared)."""
        with self._lock:
            return self._encode_remembered(texts, batch_size or self.batch_size, description)

    def _encode_remembered(
        self, texts: list[str], batch_size: int, description: str | None
    ) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if len(texts) > self._memory_size // 2:
            return self._encode(texts, batch_size, description)
        missing = list(dict.fromkeys(t for t in texts if t not in self._memory))
        if missing:
            vectors = self._encode(missing, batch_size, description)
            self._memory.update(zip(missing, vectors, strict=True))
        out = np.stack([self._memory[text] for text in texts])
        for text in texts:
            self._memory.move_to_end(text)
        while len(self._memory) > self._memory_size:
            self._memory.popitem(last=False)
        return out

    def _encode(self, texts: list[str], batch_size: int, description: str | None) -> np.ndarray:
        """Embed texts in chunks, under a progress bar when there are several chunks."""
        chunks = []
        step = max(batch_size * 8, 256)
        bar = (
            progress(description or f"embed ({self.name})", len(texts), unit="text")
            if len(texts) > step
            else nullcontext(lambda amount=1: None)
        )
        with bar as advance:
            for start in range(0, len(texts), step):
                part = texts[start : start + step]
                chunks.append(
                    self.model.encode(
                        part,
                        batch_size=batch_size,
                        normalize_embeddings=True,
                        convert_to_numpy=True,
                        show_progress_bar=False,
                    )
                )
                advance(len(part))
        return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)


@lru_cache(maxsize=4)
def load_embedder(name: str, device: str = "auto") -> SentenceEmbedder:
    """One embedder per model name and device per process (loading takes seconds)."""
    return SentenceEmbedder(name, device)


def record_text(record: dict) -> str:
    """The text a pool record is embedded by: prompt, newline, completion."""
    return f"{record['prompt']}\n{record['completion']}"
