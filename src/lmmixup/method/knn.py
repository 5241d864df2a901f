"""Exact k-nearest-neighbour search by cosine over unit rows: the one kNN helper.

Rows are expected to be L2-normalised, so the inner product is the cosine. The search is
faiss ``IndexFlatIP`` (exact, blocked over the base internally, memory ``O(n k)``). Results
are deterministic for given inputs: most similar first; among equal similarities faiss's own
order (the same on every run, though not by row index).

``exclude`` leaves one base row out per query (leave-one-out): searched by index, so an exact
duplicate of that row still counts as a neighbour. For a set searched against itself pass
``exclude=np.arange(len(X))``.
"""

from __future__ import annotations

import numpy as np


def as_matrix(X: np.ndarray) -> np.ndarray:
    """``X`` as a C-contiguous float32 2-D array (no copy when already one)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {X.shape}")
    return X


class CosineIndex:
    """Exact inner-product search over the rows of ``base``, built once and searched often."""

    def __init__(self, base: np.ndarray) -> None:
        import faiss

        self.base = as_matrix(base)
        self._index = faiss.IndexFlatIP(self.base.shape[1])
        self._index.add(self.base)

    def __len__(self) -> int:
        return self.base.shape[0]

    def search(
        self, queries: np.ndarray, k: int, *, exclude: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each query's ``k`` most similar base rows: (similarities float32, ids int64), (n, width).

        ``width`` is ``min(k, len(self))``, one less with ``exclude`` (a base row per query to
        leave out); ``k`` larger than the base gives fewer columns, never padding.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        extra = 0 if exclude is None else 1
        width = min(k + extra, len(self))
        sims, ids = self._index.search(as_matrix(queries), width)
        if exclude is None:
            return sims, ids
        return drop_excluded(sims, ids, exclude)


def cosine_top_k(
    queries: np.ndarray, base: np.ndarray, k: int, *, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``k`` most similar rows of ``base``, most similar first (see
    :meth:`CosineIndex.search`): (similarities, ids)."""
    return CosineIndex(base).search(queries, k, exclude=exclude)


def drop_excluded(
    sims: np.ndarray, ids: np.ndarray, exclude: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Remove from each result row the id ``exclude[row]``, or its last column where the id was
    not retrieved (crowded out by duplicates), so every row loses exactly one column."""
    exclude = np.asarray(exclude, dtype=np.int64)
    if exclude.shape != (ids.shape[0],):
        raise ValueError(f"exclude must hold one id per query, got shape {exclude.shape}")
    drop = ids == exclude[:, None]
    drop[~drop.any(axis=1), -1] = True
    shape = (ids.shape[0], ids.shape[1] - 1)
    return sims[~drop].reshape(shape), ids[~drop].reshape(shape)


def top_k_columns(S: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest ``min(k, S.shape[1])`` entries of each row of a dense similarity matrix,
    descending; for dense blocks too small to be worth an index: (values, columns)."""
    k = min(k, S.shape[1])
    part = np.argpartition(-S, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(S, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(part, order, axis=1)
