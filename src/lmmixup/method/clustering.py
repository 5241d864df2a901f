"""Stage 3: cluster embeddings into groups whose sizes are drawn in advance.

The method draws the cluster sizes first, places ``k = len(sizes)`` centres with spherical
k-means (k-means++ seeds, Lloyd iterations in faiss), then fills the centres greedily:
points are visited in descending order of their best-centre similarity and each goes to its
most similar centre that still has room, so every cluster ends exactly at its drawn size.

The reference implementation builds a dense ``n x k`` similarity matrix, which cannot scale
(300K points and 100K centres is 120 GB). Here each point only keeps its ``m`` most similar
centres; a point whose candidates are all full when its turn comes gets fresh candidates from
an exact search over the centres that still have room, so the greedy result is the same as
the dense one whenever the candidate lists are exact. For large ``n * k`` (above
``_FLAT_LIMIT``) the centres come from a two-level k-means (coarse cells, then k-means inside
each cell) and the candidates from the centres of the few cells nearest to each point, an
approximation whose cost grows like ``n * k ** (2/3)`` instead of ``n * k``.

All inputs are expected to be L2-normalised rows, so inner product is cosine similarity.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from lmmixup.method.cluster_sizes import check_sizes, draw_cluster_sizes, spread_units
from lmmixup.method.knn import CosineIndex, as_matrix, cosine_top_k, top_k_columns

DEFAULT_CANDIDATES = 32
"""Candidate centres kept per point before the fallback search is needed."""

_FLAT_LIMIT = 100_000_000
"""Largest ``n * k`` clustered with one flat k-means and exact candidate search."""

_KMEANS_ITERS = 20
_COARSE_ITERS = 10
_COARSE_SAMPLE = 128
_SEED_ROUNDS = 64
_PROBES = 6
_WALK_CHUNK = 4096

T = TypeVar("T")


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
    greedy_seeding: bool = False,
) -> np.ndarray:
    """Cluster unit rows of ``X`` into clusters of drawn (or given) sizes.

    Returns an int64 label per row in ``0..k-1`` where ``k = len(sizes)`` and label ``j``
    occurs exactly ``sizes[j]`` times. Sizes come from :func:`draw_cluster_sizes` unless
    ``sizes`` is given. ``greedy_seeding``: greedy k-means++ seeds (see :func:`_seed_centres`).
    Deterministic for a given ``seed``.
    """
    X = as_matrix(X)
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
    sizes = check_sizes(sizes, n)
    k = len(sizes)
    if k <= 1:
        return np.zeros(n, dtype=np.int64)
    if n * k <= _FLAT_LIMIT:
        centres = spherical_kmeans(X, k, seed=seed, greedy=greedy_seeding)
        sims, cands = cosine_top_k(X, centres, DEFAULT_CANDIDATES)
    else:
        centres, sims, cands = _two_level(X, k, seed, DEFAULT_CANDIDATES, greedy_seeding)
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
    X = as_matrix(X)
    centres = as_matrix(centres)
    sizes = check_sizes(sizes, X.shape[0])
    if len(sizes) != centres.shape[0]:
        raise ValueError(f"{len(sizes)} sizes for {centres.shape[0]} centres")
    if n_candidates < 1:
        raise ValueError("n_candidates must be >= 1")
    sims, cands = cosine_top_k(X, centres, n_candidates)
    return _greedy_fill(X, centres, sizes, cands, sims[:, 0])


def spherical_kmeans(
    X: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    niter: int = _KMEANS_ITERS,
    max_points_per_centre: int = 256,
    greedy: bool = False,
) -> np.ndarray:
    """Return ``k`` unit centres from seeded spherical k-means on unit rows ``X``.

    Trains on a random sample of at most ``max_points_per_centre * k`` rows, starting from
    k-means++ seeds (:func:`_seed_centres`, greedy ones with ``greedy``); Lloyd iterations
    run in faiss.
    """
    X = as_matrix(X)
    n, d = X.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n}, got {k}")
    if k == n:
        return X.copy()
    if k == 1:
        return _normalise(X.sum(axis=0, keepdims=True))
    rng = np.random.default_rng(seed)
    if n > max_points_per_centre * k:
        X = X[np.sort(rng.choice(n, max_points_per_centre * k, replace=False))]
    km = faiss.Kmeans(
        d,
        k,
        niter=niter,
        seed=int(seed) % 2**31,
        spherical=True,
        min_points_per_centroid=1,
        max_points_per_centroid=max_points_per_centre,
    )
    km.train(X, init_centroids=X[_seed_centres(X, k, rng, greedy=greedy)])
    return _normalise(km.centroids)


def _seed_centres(
    X: np.ndarray, k: int, rng: np.random.Generator, *, greedy: bool = False
) -> np.ndarray:
    """Pick ``k`` distinct row indices as k-means seeds: k-means++, in rounds.

    Each new seed is drawn with probability proportional to the squared distance
    (``2 - 2 cos``) to the nearest seed so far. With ``greedy`` (greedy k-means++, what
    scikit-learn and the paper's reference use) it is the best of ``2 + int(ln k)`` such
    candidates, the one that leaves the smallest total distance of all rows to their nearest
    seed. On sentence embeddings of real pairs plain seeds gave the more cohesive clusters
    (docs/BENCHMARKS.md, "Cluster cohesion"), so plain is the default.

    To keep the cost near a few Lloyd iterations for large ``k``, the seeds are placed in
    ``_SEED_ROUNDS`` rounds: each round draws the candidates of all its seeds at once
    (distinct rows, from the distances at the start of the round) and then picks its seeds
    one after the other, each scored against every seed picked before it. With
    ``k <= _SEED_ROUNDS + 1`` this is exact (greedy) k-means++.
    """
    n = X.shape[0]
    trials = 2 + int(np.log(k)) if greedy else 1
    seeds = np.empty(k, dtype=np.int64)
    seeds[0] = rng.integers(n)
    taken = np.zeros(n, dtype=bool)
    taken[seeds[0]] = True
    nearest = (X @ X[seeds[0]]).astype(np.float64)
    batch = -(-(k - 1) // _SEED_ROUNDS)
    for start in range(1, k, batch):
        slots = min(batch, k - start)
        weight = np.where(taken, 0.0, np.maximum(1.0 - nearest, 0.0))
        count = min(slots * trials, int(n - taken.sum()))
        cands = _draw_rows(weight, count, taken, rng)
        sims = X @ X[cands].T
        if trials == 1:  # plain: every candidate is a seed
            seeds[start : start + slots] = cands
            taken[cands] = True
            nearest = np.maximum(nearest, sims.max(axis=1))
            continue
        for slot in range(slots):
            cols = np.arange(slot, count, slots)  # slot s owns candidates s, s + slots, ...
            gains = np.maximum(nearest[:, None], sims[:, cols]).sum(axis=0)
            best = cols[int(np.argmax(gains))]
            seeds[start + slot] = cands[best]
            taken[cands[best]] = True
            nearest = np.maximum(nearest, sims[:, best])
    return seeds


def _draw_rows(
    weight: np.ndarray, count: int, taken: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Draw ``count`` distinct rows with probability proportional to ``weight``.

    When fewer rows than ``count`` have a positive weight (duplicated points), all of them
    are taken and the rest are drawn uniformly from the rows not ``taken`` yet.
    """
    positive = np.flatnonzero(weight)
    if len(positive) >= count:
        return rng.choice(len(weight), size=count, replace=False, p=weight / weight.sum())
    rest = np.flatnonzero((weight == 0) & ~taken)
    return np.r_[positive, rng.choice(rest, size=count - len(positive), replace=False)]


def cohesion(X: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean cosine of each cluster's members to its normalised centroid.

    Entry ``j`` is for label ``j`` (labels are ``0..labels.max()``); an unused label gives
    NaN. For unit rows this equals ``|sum of members| / count``.
    """
    X = as_matrix(X)
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
    sums = np.add.reduceat(X[order], starts, axis=0).astype(np.float64)
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
    X = as_matrix(X)
    keys = np.asarray(groups, dtype=object)
    if keys.shape != (X.shape[0],):
        raise ValueError("groups must have one entry per row of X")
    labels = np.empty(X.shape[0], dtype=np.int64)
    offset = 0
    for key in sorted(set(keys.tolist())):
        rows = np.flatnonzero(keys == key)
        try:
            sub = cluster_embeddings(X[rows], **kwargs)
        except ValueError as err:
            raise ValueError(f"group {key!r} ({len(rows)} rows): {err}") from err
        labels[rows] = sub + offset
        offset += int(sub.max()) + 1
    return labels


# ---------------------------------------------------------------------------------------
# centres and candidates


def _normalise(V: np.ndarray) -> np.ndarray:
    """Scale rows to unit length (all-zero rows stay zero)."""
    V = np.ascontiguousarray(V, dtype=np.float32)
    norms = np.linalg.norm(V, axis=1, keepdims=True)
    return V / np.where(norms > 0, norms, 1.0)


def _two_level(
    X: np.ndarray, k: int, seed: int, m: int, greedy: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres and approximate candidates from a two-level k-means.

    Coarse cells come from k-means with about ``(n k / 256) ** (1/3)`` centres (balancing
    the cost of the two levels); each cell gets a share of the ``k`` centres proportional to
    its size, fitted on its own points. A point's candidates are its top-``m`` among the
    centres of its ``_PROBES`` nearest cells (an inverted-file search done as dense
    products, one cell at a time). Returns (centres, candidate similarities, ids).
    """
    n = X.shape[0]
    n_cells = int(np.clip(round((n * k / 256) ** (1 / 3)), 2, k))
    coarse = spherical_kmeans(
        X,
        n_cells,
        seed=seed,
        niter=_COARSE_ITERS,
        max_points_per_centre=_COARSE_SAMPLE,
        greedy=greedy,
    )
    _, probes = cosine_top_k(X, coarse, _PROBES)
    members = _group_rows(probes[:, 0], n_cells)
    shares = _apportion(k, np.array([len(rows) for rows in members]))
    centres = _fit_cells(X, members, shares, seed, greedy)
    bounds = np.r_[0, np.cumsum(shares)]
    return (centres, *_probe_candidates(X, centres, bounds, probes, min(m, k)))


def _fit_cells(
    X: np.ndarray, members: list[np.ndarray], shares: np.ndarray, seed: int, greedy: bool
) -> np.ndarray:
    """Spherical k-means with ``shares[c]`` centres on the rows of each cell ``c``."""

    def fit(cell: int) -> np.ndarray:
        rows, share = members[cell], int(shares[cell])
        if not share:
            return X[:0]
        return spherical_kmeans(X[rows], share, seed=seed + cell, greedy=greedy)

    return np.concatenate(_map_cells(fit, len(members)))


def _probe_candidates(
    X: np.ndarray, centres: np.ndarray, bounds: np.ndarray, probes: np.ndarray, m: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``m`` centres per point among the cells it probes, most similar first.

    Cell ``c`` owns centres ``bounds[c]:bounds[c + 1]``; ``probes[i]`` lists the cells
    point ``i`` searches. Each cell is searched once for all points probing it, then the
    per-probe lists are merged. Rows left short (too few centres probed) repeat their best.
    """
    n, n_probes = probes.shape
    part_sims = np.full((n_probes * n, m), -np.inf, dtype=np.float32)
    part_ids = np.full((n_probes * n, m), -1, dtype=np.int64)
    slots_of = _group_rows(probes.T.ravel(), len(bounds) - 1)

    def search(cell: int) -> None:
        lo, hi, slots = bounds[cell], bounds[cell + 1], slots_of[cell]
        if hi > lo and len(slots):
            sims, local = top_k_columns(X[slots % n] @ centres[lo:hi].T, m)
            part_sims[slots, : sims.shape[1]] = sims
            part_ids[slots, : sims.shape[1]] = local + lo

    _map_cells(search, len(slots_of))
    sims, ids = faiss.merge_knn_results(
        part_sims.reshape(n_probes, n, m), part_ids.reshape(n_probes, n, m), keep_max=True
    )
    return sims, np.where(ids >= 0, ids, ids[:, :1])


def _map_cells(work: Callable[[int], T], n_cells: int) -> list[T]:
    """``[work(c) for c in range(n_cells)]``, in parallel threads.

    Cells are small, so each runs single-threaded (multi-threaded BLAS on small products
    mostly spins, badly so on a busy machine) and cells run side by side, as faiss and
    BLAS release the GIL. The result does not depend on the scheduling.
    """

    def run(cell: int) -> T:
        faiss.omp_set_num_threads(1)  # this worker thread only
        return work(cell)

    workers = faiss.omp_get_max_threads()
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(run, range(n_cells)))


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
    spread_units(shares, diff, lo, weights, preference)
    return shares


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
        self._index: CosineIndex | None = None

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
        self._index = CosineIndex(self._centres[self._ids])

    def _query(self, Q: np.ndarray) -> np.ndarray:
        """Top candidates from the snapshot, padded to the full width with the last one."""
        found = min(self._width, len(self._ids))
        _, local = self._index.search(Q, found)
        ids = self._ids[local]
        pad = np.repeat(ids[:, -1:], self._width - found, axis=1)
        return np.concatenate([ids, pad], axis=1)
