"""Types shared across layers: the records that flow between stages and the embedder protocol."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

Record = dict[str, Any]
"""One JSON object of a JSONL file: a pool pair, a rated pair, a cluster or a mixture row."""


class Embedder(Protocol):
    """Anything that turns texts into an (n, d) float32 array of unit vectors.

    :class:`lmmixup.backends.embed.SentenceEmbedder` is the real one; the MIXTURE builder's
    lexical embedder and the tests' fakes follow the same protocol.
    """

    def encode(self, texts: list[str]) -> np.ndarray: ...
