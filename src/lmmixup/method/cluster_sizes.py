"""Cluster sizes: drawn in advance from a clipped normal so they sum to the number of points,
or given by the caller and checked."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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
    spread_units(sizes, n - int(sizes.sum()), min_size, max_size, rng.permutation(len(sizes)))
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


def spread_units(
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


def check_sizes(sizes: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
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
