"""Embeddings saved beside a record file, so a later stage need not embed the records again.

The cluster stage embeds every record it clusters; it saves the vectors as NAME.vectors.npz
beside its NAME.jsonl output, with the embedder's name and a digest of each record's text.
The distill stage reads them for its drift check: a member's saved vector is used only when
the embedder is the same and the member's text is unchanged; anything else is embedded again.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lmmixup.errors import LmmixupError
from lmmixup.io.jsonl import write_error

SUFFIX = ".vectors.npz"


def vectors_beside(path: str | Path) -> Path:
    """Where the embeddings of the records of `path` are saved: NAME.vectors.npz beside it."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".jsonl") + SUFFIX)


def text_digest(text: str) -> int:
    """A 64-bit digest of a text: tells whether a saved vector is still the text's."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def save_vectors(
    path: Path, ids: Sequence[str], texts: Sequence[str], vectors: np.ndarray, embedder: str
) -> None:
    """Save one vector per id (with its text's digest and the embedder's name), atomically."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                ids=np.array(list(ids), dtype=str),
                digests=np.array([text_digest(t) for t in texts], dtype=np.uint64),
                vectors=np.asarray(vectors, dtype=np.float32),
                embedder=np.array(embedder),
            )
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(path, exc) from exc


class SavedVectors:
    """Saved vectors by record id; `get` gives one only while its record's text is unchanged."""

    def __init__(self, ids: np.ndarray, digests: np.ndarray, vectors: np.ndarray):
        self._rows = {record_id: row for row, record_id in enumerate(ids.tolist())}
        self._digests = digests
        self._vectors = vectors

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, record_id: str, text: str) -> np.ndarray | None:
        """The saved vector of `record_id`, None when there is none or its text changed."""
        row = self._rows.get(record_id)
        if row is None or int(self._digests[row]) != text_digest(text):
            return None
        return self._vectors[row]


def load_vectors(path: Path, embedder: str) -> SavedVectors | None:
    """The vectors saved at `path` by `embedder`; None when there is no such file or another
    embedder made it. A file that cannot be read is an error naming it."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["embedder"]) != embedder:
                return None
            return SavedVectors(data["ids"], data["digests"], data["vectors"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise LmmixupError(
            f"cannot read the saved embeddings {path} ({exc}); delete the file and re-run"
        ) from None
