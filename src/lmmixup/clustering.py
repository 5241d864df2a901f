"""Stage 3: cluster embeddings into groups whose sizes are drawn in advance.

The method draws the cluster sizes first, places ``k = len(sizes)`` centres with spherical
k-means, then fills the centres greedily: points are visited in descending order of their
best-centre similarity and each goes to its most similar centre that still has room, so
every cluster ends exactly at its drawn size.

The reference implementation builds a dense ``n x k`` similarity matrix, which cannot scale
(300K points and 100K centres is 120 GB). Here each point only keeps its ``m`` most similar
centres; a point whose candidates are all full when its turn comes gets fresh candidates from
an exact search over the centres that still have room, so the greedy result is the same as
the dense one whenever the candidate lists are exact. For large ``n * k`` the centres come
from a two-level k-means (coarse cells, then k-means inside each cell) and the candidates
from the centres of the few cells nearest to each point's cell.

All inputs are expected to be L2-normalised rows, so inner product is cosine similarity.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import faiss
import numpy as np

DEFAULT_CANDIDATES = 32
"""Candidate centres kept per point before the fallback search is needed."""

_FLAT_LIMIT = 20_000_000
"""Largest ``n * k`` clustered with one flat k-means and exact candidate search."""

_KMEANS_ITERS = 20
_COARSE_ITERS = 10
_NEIGHBOUR_CELLS = 4
_WALK_CHUNK = 4096
_MAX_SIZE_DRAWS = 64


# ---------------------------------------------------------------------------------------
# cluster sizes


def draw_cluster_sizes(
    n: int,
    *,
    min_size: int = 2,
    max_size: int = 25,
    mean_size: float = 10.0,
    std_size: float = 3.0,
    seed: int = 0,
) -> np.ndarray:
    """Draw cluster sizes in ``[min_size, max_size]`` that sum to exactly ``n``.

    Sizes are ``round(Normal(mean_size, std_size))`` clipped to the bounds, drawn until
    their running sum reaches ``n``. The last size is trimmed by the excess. If the trim
    leaves it below ``min_size`` it is dropped and its samples are spread one by one over
    other clusters with room; when dropping it would leave too few clusters to hold ``n``,
    it is raised to ``min_size`` and the surplus is taken one by one from clusters above
    ``min_size`` instead. The clusters that give or take are chosen in a seeded random
    order, so the drawn distribution is kept as far as possible.

    Special cases (no sample is ever lost):

    - ``n == 0`` gives no clusters (an empty array).
    - ``1 <= n < min_size`` gives a single cluster of ``n``, the one size below ``min_size``.
    - ``n`` that no number of clusters in ``[min_size, max_size]`` can sum to (for example
      ``n = 6`` with sizes in ``[4, 5]``) raises ``ValueError``.

    Deterministic for a given ``seed``.
    """
    _check_size_params(n, min_size, max_size, std_size)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n < min_size:
        return np.array([n], dtype=np.int64)
    fewest = -(-n // max_size)
    if fewest * min_size > n:
        raise ValueError(
            f"{n} samples cannot be split into clusters of {min_size}..{max_size}: "
            f"{fewest} clusters hold at least {fewest * min_size}, {fewest - 1} at most "
            f"{(fewest - 1) * max_size}; widen the size range"
        )
    rng = np.random.default_rng(seed)
    sizes = _draw_until(n, rng, min_size, max_size, mean_size, std_size)
    sizes[-1] -= int(sizes.sum()) - n
    if sizes[-1] < min_size:
        if len(sizes) - 1 >= fewest:
            sizes = sizes[:-1]
        else:
            sizes[-1] = min_size
    _spread(sizes, n - int(sizes.sum()), min_size, max_size, rng.permutation(len(sizes)))
    return sizes


def _check_size_params(n: int, min_size: int, max_size: int, std_size: float) -> None:
    """Reject size parameters that make no sense."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if min_size < 1:
        raise ValueError(f"min_size must be >= 1, got {min_size}")
    if max_size < min_size:
        raise ValueError(f"max_size ({max_size}) must be >= min_size ({min_size})")
    if not std_size >= 0:
        raise ValueError(f"std_size must be >= 0, got {std_size}")


def _draw_until(
    n: int,
    rng: np.random.Generator,
    min_size: int,
    max_size: int,
    mean_size: float,
    std_size: float,
) -> np.ndarray:
    """Draw clipped rounded normal sizes; return the shortest prefix whose sum is >= n."""
    batch = n // min_size + 1  # enough: every clipped size is at least min_size
    raw = rng.normal(mean_size, std_size, size=batch)
    sizes = np.clip(np.rint(raw), min_size, max_size).astype(np.int64)
    count = int(np.searchsorted(np.cumsum(sizes), n)) + 1
    return sizes[:count].copy()


def _spread(
    sizes: np.ndarray,
    diff: int,
    lo: int | np.ndarray,
    hi: int | np.ndarray,
    preference: np.ndarray,
) -> None:
    """Add ``diff`` (or remove ``-diff``) one unit at a time, keeping sizes in ``[lo, hi]``.

    Each pass gives (takes) one unit to (from) every eligible entry in ``preference``
    order until the difference is used up. The caller guarantees enough room or slack.
    """
    lo = np.broadcast_to(lo, sizes.shape)[preference]
    hi = np.broadcast_to(hi, sizes.shape)[preference]
    step = 1 if diff > 0 else -1
    while diff:
        current = sizes[preference]
        eligible = current < hi if step > 0 else current > lo
        chosen = preference[eligible][: abs(diff)]
        if len(chosen) == 0:
            raise AssertionError("no room left to spread the size difference")
        sizes[chosen] += step
        diff -= step * len(chosen)


def _check_sizes(sizes: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """Validate caller-given cluster sizes: positive integers summing to ``n``."""
    arr = np.asarray(sizes)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError("sizes must be a 1-D sequence of integers")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 1:
        raise ValueError("every cluster size must be >= 1")
    if int(arr.sum()) != n:
        raise ValueError(f"sizes sum to {int(arr.sum())}, but there are {n} points")
    return arr


# ---------------------------------------------------------------------------------------
# public clustering API


def cluster_embeddings(
    X: np.ndarray,
    *,
    min_size: int = 2,
    max_size: int = 25,
    mean_size: float = 10.0,
    std_size: float = 3.0,
    seed: int = 0,
    sizes: Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """Cluster unit rows of ``X`` into clusters of drawn (or given) sizes.

    Returns an int64 label per row in ``0..k-1`` where ``k = len(sizes)`` and label ``j``
    occurs exactly ``sizes[j]`` times. Sizes come from :func:`draw_cluster_sizes` unless
    ``sizes`` is given. Deterministic for a given ``seed``.
    """
    X = _as_matrix(X)
    n = X.shape[0]
    if sizes is None:
        sizes = draw_cluster_sizes(
            n,
            min_size=min_size,
            max_size=max_size,
            mean_size=mean_size,
            std_size=std_size,
            seed=seed,
        )
    sizes = _check_sizes(sizes, n)
    k = len(sizes)
    if k <= 1:
        return np.zeros(n, dtype=np.int64)
    if n * k <= _FLAT_LIMIT:
        centres = spherical_kmeans(X, k, seed=seed)
        sims, cands = _exact_candidates(X, centres, DEFAULT_CANDIDATES)
    else:
        centres, sims, cands = _two_level(X, k, seed, DEFAULT_CANDIDATES)
    return _greedy_fill(X, centres, sizes, cands, sims[:, 0])


def assign_to_centres(
    X: np.ndarray,
    centres: np.ndarray,
    sizes: Sequence[int] | np.ndarray,
    *,
    n_candidates: int = DEFAULT_CANDIDATES,
) -> np.ndarray:
    """Capacity-constrained greedy assignment of unit rows to given unit centres.

    Centre ``j`` receives exactly ``sizes[j]`` points. Candidates come from an exact
    search, so the result equals the dense reference (visit points by descending best
    similarity, each to its most similar centre with room) up to ties, for any
    ``n_candidates >= 1``; a small value only makes the fallback search run more often.
    """
    X = _as_matrix(X)
    centres = _as_matrix(centres)
    sizes = _check_sizes(sizes, X.shape[0])
    if len(sizes) != centres.shape[0]:
        raise ValueError(f"{len(sizes)} sizes for {centres.shape[0]} centres")
    if n_candidates < 1:
        raise ValueError("n_candidates must be >= 1")
    sims, cands = _exact_candidates(X, centres, n_candidates)
    return _greedy_fill(X, centres, sizes, cands, sims[:, 0])


def spherical_kmeans(
    X: np.ndarray, k: int, *, seed: int = 0, niter: int = _KMEANS_ITERS
) -> np.ndarray:
    """Return ``k`` unit centres from seeded spherical k-means on unit rows ``X``."""
    X = _as_matrix(X)
    n, d = X.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n}, got {k}")
    if k == n:
        return X.copy()
    if k == 1:
        return _normalise(X.sum(axis=0, keepdims=True))
    km = faiss.Kmeans(
        d, k, niter=niter, seed=int(seed) % 2**31, spherical=True, min_points_per_centroid=1
    )
    km.train(X)
    return _normalise(km.centroids)


def cohesion(X: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean cosine of each cluster's members to its normalised centroid.

    Entry ``j`` is for label ``j`` (labels are ``0..labels.max()``); an unused label gives
    NaN. For unit rows this equals ``|sum of members| / count``.
    """
    X = _as_matrix(X)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (X.shape[0],):
        raise ValueError("labels must have one entry per row of X")
    if labels.size == 0:
        return np.zeros(0)
    if labels.min() < 0:
        raise ValueError("labels must be >= 0")
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    sums = np.add.reduceat(X[order].astype(np.float64), starts, axis=0)
    counts = np.diff(np.r_[starts, len(labels)])
    out = np.full(int(labels.max()) + 1, np.nan)
    out[sorted_labels[starts]] = np.linalg.norm(sums, axis=1) / counts
    return out


def cluster_by_group(X: np.ndarray, groups: Sequence[Hashable], **kwargs: Any) -> np.ndarray:
    """Cluster each group (e.g. each source subset) on its own; labels unique overall.

    Groups are taken in sorted order of their distinct values; each group's labels are
    offset past the previous groups' labels. ``kwargs`` go to :func:`cluster_embeddings`
    (``sizes`` is not accepted, since it is per group).
    """
    if "sizes" in kwargs:
        raise TypeError("cluster_by_group draws sizes per group; 'sizes' is not accepted")
    X = _as_matrix(X)
    keys = np.asarray(groups, dtype=object)
    if keys.shape != (X.shape[0],):
        raise ValueError("groups must have one entry per row of X")
    labels = np.empty(X.shape[0], dtype=np.int64)
    offset = 0
    for key in sorted(set(keys.tolist())):
        rows = np.flatnonzero(keys == key)
        sub = cluster_embeddings(X[rows], **kwargs)
        labels[rows] = sub + offset
        offset += int(sub.max()) + 1
    return labels


# ---------------------------------------------------------------------------------------
# centres and candidates


def _as_matrix(X: np.ndarray) -> np.ndarray:
    """Return ``X`` as a C-contiguous float32 2-D array (no copy when already one)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {X.shape}")
    return X


def _normalise(V: np.ndarray) -> np.ndarray:
    """Scale rows to unit length (all-zero rows stay zero)."""
    V = np.ascontiguousarray(V, dtype=np.float32)
    norms = np.linalg.norm(V, axis=1, keepdims=True)
    return V / np.where(norms > 0, norms, 1.0)


def _exact_candidates(X: np.ndarray, centres: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``m`` centres per row, most similar first: (similarities, centre ids)."""
    index = faiss.IndexFlatIP(centres.shape[1])
    index.add(centres)
    sims, ids = index.search(X, min(m, centres.shape[0]))
    return sims, ids.astype(np.int64)


def _two_level(
    X: np.ndarray, k: int, seed: int, m: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres and approximate candidates from a two-level k-means.

    Coarse cells come from k-means with about ``(n k / 256) ** (1/3)`` centres (balancing
    the cost of the two levels); each cell gets a share of the ``k`` centres proportional to
    its size, fitted on its own points. A point's candidates are its top-``m`` among the
    centres of the ``_NEIGHBOUR_CELLS`` cells whose centroids are nearest its own cell's.
    Returns (centres, candidate similarities, candidate ids).
    """
    n = X.shape[0]
    n_cells = int(np.clip(round((n * k / 256) ** (1 / 3)), 2, k))
    coarse = _coarse_cells(X, n_cells, seed)
    _, cell_of = _exact_candidates(X, coarse, 1)
    cell_of = cell_of[:, 0]
    members = _group_rows(cell_of, n_cells)
    shares = _apportion(k, np.array([len(rows) for rows in members]))
    centres_per_cell = [
        spherical_kmeans(X[rows], int(share), seed=seed + cell) if share else X[:0]
        for cell, (rows, share) in enumerate(zip(members, shares, strict=True))
    ]
    centres = np.concatenate(centres_per_cell)
    first_centre = np.r_[0, np.cumsum(shares)]
    _, near_cells = _exact_candidates(coarse, coarse, _NEIGHBOUR_CELLS)
    width = min(m, k)
    sims = np.empty((n, width), dtype=np.float32)
    cands = np.empty((n, width), dtype=np.int64)
    for cell, rows in enumerate(members):
        if len(rows) == 0:
            continue
        pool = np.concatenate(
            [np.arange(first_centre[c], first_centre[c + 1]) for c in near_cells[cell]]
        )
        sims[rows], cands[rows] = _top_in_pool(X[rows], centres, pool, width)
    return centres, sims, cands


def _coarse_cells(X: np.ndarray, n_cells: int, seed: int) -> np.ndarray:
    """Coarse spherical k-means centroids on a subsample of at most 128 points per cell."""
    km = faiss.Kmeans(
        X.shape[1],
        n_cells,
        niter=_COARSE_ITERS,
        seed=int(seed) % 2**31,
        spherical=True,
        max_points_per_centroid=128,
    )
    km.train(X)
    return _normalise(km.centroids)


def _group_rows(keys: np.ndarray, n_keys: int) -> list[np.ndarray]:
    """Row indices for each key ``0..n_keys-1`` (ascending within a key)."""
    order = np.argsort(keys, kind="stable")
    bounds = np.searchsorted(keys[order], np.arange(n_keys + 1))
    return [order[bounds[i] : bounds[i + 1]] for i in range(n_keys)]


def _apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Split ``total`` into integer shares proportional to ``weights``.

    Every non-empty weight gets between 1 and its weight; leftovers go by largest
    remainder. The caller guarantees ``count(weights > 0) <= total <= weights.sum()``.
    """
    exact = total * weights / weights.sum()
    lo = (weights > 0).astype(np.int64)
    shares = np.clip(np.floor(exact).astype(np.int64), lo, weights)
    diff = total - int(shares.sum())
    preference = np.argsort((shares - exact) * np.sign(diff), kind="stable")
    _spread(shares, diff, lo, weights, preference)
    return shares


def _top_in_pool(
    Q: np.ndarray, centres: np.ndarray, pool: np.ndarray, m: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``m`` centres of ``pool`` for each row of ``Q``, most similar first."""
    S = Q @ centres[pool].T
    if len(pool) < m:
        # Too few centres nearby: pad with the best one so every row has m entries.
        S = np.concatenate([S, np.repeat(S[:, :1], m - len(pool), axis=1)], axis=1)
        pool = np.r_[pool, np.repeat(pool[:1], m - len(pool))]
    part = np.argpartition(-S, m - 1, axis=1)[:, :m]
    top = np.take_along_axis(S, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1), pool[np.take_along_axis(part, order, 1)]


# ---------------------------------------------------------------------------------------
# capacity-constrained greedy assignment


def _greedy_fill(
    X: np.ndarray,
    centres: np.ndarray,
    sizes: np.ndarray,
    cands: np.ndarray,
    best: np.ndarray,
) -> np.ndarray:
    """Visit points by descending ``best`` and give each its first candidate with room.

    ``cands`` holds each point's candidate centres, most similar first (it is updated in
    place). Before each window of points is walked, the points of the window with no
    candidate left with room get fresh candidates from :class:`_OpenCentres`; the walk stops
    at the first point that runs out during the window, and the next window starts there.
    """
    room = sizes.copy()
    labels = np.full(X.shape[0], -1, dtype=np.int64)
    order = np.argsort(-best, kind="stable")
    fallback = _OpenCentres(centres, cands.shape[1])
    pos = 0
    while pos < len(order):
        window = order[pos : pos + _WALK_CHUNK]
        stale = window[~(room[cands[window]] > 0).any(axis=1)]
        if len(stale):
            cands[stale] = fallback.search(X[stale], room)
        pos += _walk(window.tolist(), cands[window].tolist(), room, labels)
    return labels


def _walk(points: list[int], rows: list[list[int]], room: np.ndarray, labels: np.ndarray) -> int:
    """Assign points in order to their first candidate with room; stop at one with none.

    Returns how many points were assigned.
    """
    for done, (point, row) in enumerate(zip(points, rows, strict=True)):
        for centre in row:
            if room[centre] > 0:
                room[centre] -= 1
                labels[point] = centre
                break
        else:
            return done
    return len(points)


class _OpenCentres:
    """Exact candidate search over a snapshot of the centres that still have room.

    The snapshot is a superset of the open centres (centres only ever fill up), so the
    first open entry of a candidate list taken from it is the most similar open centre.
    It is rebuilt when fewer than half of its centres are still open, and whenever a query
    finds no open centre among its candidates.
    """

    def __init__(self, centres: np.ndarray, width: int) -> None:
        self._centres = centres
        self._width = width
        self._ids = np.zeros(0, dtype=np.int64)
        self._index = faiss.IndexFlatIP(centres.shape[1])

    def search(self, Q: np.ndarray, room: np.ndarray) -> np.ndarray:
        """Candidate centre ids for each row of ``Q``, each row with at least one open."""
        if 2 * np.count_nonzero(room) < len(self._ids) or not len(self._ids):
            self._rebuild(room)
        ids = self._query(Q)
        dead = ~(room[ids] > 0).any(axis=1)
        if dead.any():
            self._rebuild(room)
            ids[dead] = self._query(Q[dead])
        return ids

    def _rebuild(self, room: np.ndarray) -> None:
        """Snapshot the centres that have room now."""
        self._ids = np.flatnonzero(room > 0)
        self._index.reset()
        self._index.add(self._centres[self._ids])

    def _query(self, Q: np.ndarray) -> np.ndarray:
        """Top candidates from the snapshot, padded to the full width with the last one."""
        found = min(self._width, len(self._ids))
        _, local = self._index.search(Q, found)
        ids = self._ids[local]
        pad = np.repeat(ids[:, -1:], self._width - found, axis=1)
        return np.concatenate([ids, pad], axis=1)
