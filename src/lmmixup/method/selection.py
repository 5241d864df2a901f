"""Stage 5: choose the training set under a budget, and the baselines to compare it with.

Records are dicts with at least ``id``, ``prompt``, ``completion``, ``source`` and, once rated,
``rating`` (``{"score": 0..5, "overall": 1..10, ...}`` or ``None`` when rating failed).
Embeddings are unit rows aligned with the records.

Every selector returns a :class:`Selection`: the chosen records (shuffled with the seed), one
"why" row per chosen record, and a summary of what was asked for and what was delivered.
No selector silently returns fewer rows than its budget: a side that runs short is filled
from the other sides by their own ranking (the rows are flagged ``filled_shortfall``), and
if the whole pool is still too small a :class:`ShortfallError` is raised unless the caller
passes ``allow_short=True`` (then the summary says by how much it is short).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from lmmixup.errors import LmmixupError
from lmmixup.method.knn import as_matrix, cosine_top_k
from lmmixup.method.task_mix import per_task_order, quota_notes, task_counts, task_of
from lmmixup.records import effective_score

HIGH_SCORE = 4
"""Compressed scores at or above this are high quality (overall >= 8)."""

Record = dict[str, Any]


class ShortfallError(LmmixupError, ValueError):
    """The candidates cannot fill the budget."""


@dataclass(frozen=True)
class Selection:
    """Chosen records, why each was chosen, and a summary of the choice."""

    records: list[Record]
    why: list[dict[str, Any]]
    summary: dict[str, Any]


@dataclass(frozen=True)
class _Side:
    """One source of candidates: its records, best first, and how many are wanted."""

    origin: str
    records: Sequence[Record]
    order: np.ndarray  # indices into records, best first
    requested: int
    long_tail: np.ndarray | None = None  # per record, reported in the why rows
    task_rank: np.ndarray | None = None  # per record, with per-task quotas (why rows)


# ---------------------------------------------------------------------------------------
# scores and ranking


def long_tail_scores(X: np.ndarray, k: int = 15) -> np.ndarray:
    """Mean cosine distance (``1 - cos``) from each row to its ``k`` nearest other rows.

    The row itself is excluded (even when it has exact duplicates, one of which may be
    found first); ``k`` is lowered to ``n - 1`` for small inputs and a single row scores 0.
    Exact search (:func:`lmmixup.method.knn.cosine_top_k`), so memory stays ``O(n k)``.
    Rows are expected to be unit vectors.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    X = as_matrix(X)
    n = X.shape[0]
    if n < 2:
        return np.zeros(n)
    others, _ = cosine_top_k(X, X, k, exclude=np.arange(n))
    return 1.0 - others.astype(np.float64).mean(axis=1)


def minmax(x: np.ndarray) -> np.ndarray:
    """Scale values to ``[0, 1]``; a constant (or empty) array gives zeros."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x.copy()
    low, span = x.min(), x.max() - x.min()
    return (x - low) / span if span > 0 else np.zeros_like(x)


def record_score(record: Record) -> int | None:
    """The effective 0..5 score of a rated record (curated when curation ran, see
    :func:`lmmixup.records.effective_score`); ``None`` when it has no rating."""
    rating = record.get("rating")
    return None if rating is None else effective_score(rating)


def _overall(rating: dict) -> int:
    """A rating's 1..10 overall; ``score + 4`` when only the compressed score is known, or
    when curation corrected the score (the judge's overall is then the contradicted one)."""
    overall = rating.get("overall")
    score = effective_score(rating)
    if overall is None or score != rating["score"]:
        return score + 4
    return int(overall)


def rank_records(records: Sequence[Record], long_tail: np.ndarray) -> np.ndarray:
    """Indices of ``records`` ordered by (score desc, long-tail desc, id asc).

    Unrated records (``rating`` is ``None``) come after every rated one.
    """
    long_tail = _aligned(long_tail, records, "long_tail")

    def key(i: int) -> tuple:
        score = record_score(records[i])
        unrated = score is None
        return (unrated, 0 if unrated else -score, -long_tail[i], str(records[i]["id"]))

    return np.array(sorted(range(len(records)), key=key), dtype=np.int64)


def rank_by_long_tail(records: Sequence[Record], long_tail: np.ndarray) -> np.ndarray:
    """Indices of ``records`` ordered by (long-tail desc, id asc)."""
    long_tail = _aligned(long_tail, records, "long_tail")
    return np.array(
        sorted(range(len(records)), key=lambda i: (-long_tail[i], str(records[i]["id"]))),
        dtype=np.int64,
    )


def parse_ratio(value: float | str) -> float:
    """A fraction in ``[0, 1]`` from ``0.3``, ``"0.3"`` or ``"3:7"`` (first part : second)."""
    if isinstance(value, str) and ":" in value:
        first, _, second = value.partition(":")
        a, b = float(first), float(second)
        if a < 0 or b < 0 or a + b <= 0:
            raise ValueError(f"bad ratio {value!r}: expected two non-negative parts, e.g. 3:7")
        return a / (a + b)
    fraction = float(value)
    if not 0 <= fraction <= 1:
        raise ValueError(f"ratio {value!r} must be in [0, 1] or written as a:b")
    return fraction


def _split_count(budget: int, fraction: float) -> int:
    """``round(budget * fraction)``, halves rounded up."""
    return math.floor(budget * fraction + 0.5)


# ---------------------------------------------------------------------------------------
# the method's selection


def mix_budget(
    original: Sequence[Record],
    mixup: Sequence[Record],
    *,
    budget: int,
    mixup_ratio: float | str,
    seed: int = 42,
    original_long_tail: np.ndarray,
    mixup_long_tail: np.ndarray,
    allow_short: bool = False,
    per_task: bool = False,
) -> Selection:
    """The method's training set: distilled and original records at a fixed ratio.

    ``mixup_ratio`` is the distilled share of the budget (``0.3`` or ``"3:7"``); the
    distilled count is ``round(budget * ratio)``. Distilled records are taken by long-tail
    (desc), originals by :func:`rank_records`. Long-tail arrays are aligned with their
    records, normally ``minmax(long_tail_scores(X))`` of each set's own embeddings.

    ``per_task``: each side's count is split over task types in proportion to the task-type
    shares of all the candidates (both sides together), each task taking its best records by
    the side's ranking (:mod:`lmmixup.method.task_mix`); the summary's ``by_task`` and notes
    say what each task wanted, had and got, and the why rows carry ``task_type`` and
    ``task_rank``.
    """
    fraction = parse_ratio(mixup_ratio)
    n_mix = _split_count(budget, fraction)
    mixup_lt = _aligned(mixup_long_tail, mixup, "mixup_long_tail")
    original_lt = _aligned(original_long_tail, original, "original_long_tail")
    sides = [
        _Side("distilled", mixup, rank_by_long_tail(mixup, mixup_lt), n_mix, mixup_lt),
        _Side(
            "original",
            original,
            rank_records(original, original_lt),
            budget - n_mix,
            original_lt,
        ),
    ]
    if not per_task:
        return _select(sides, "mix_budget", budget, seed, allow_short, mixup_ratio=fraction)
    return _per_task_select(
        sides, task_counts(original, mixup), budget, seed, allow_short, fraction
    )


def _per_task_select(
    sides: list[_Side],
    weights: dict[str, int],
    budget: int,
    seed: int,
    allow_short: bool,
    fraction: float,
) -> Selection:
    """`mix_budget` with task quotas on each side (see there)."""
    reports, notes, quota_sides = {}, [], []
    for side in sides:
        order, task_rank, report = per_task_order(side.records, side.order, side.requested, weights)
        quota_sides.append(replace(side, order=order, task_rank=task_rank))
        reports[side.origin] = report
        notes += quota_notes(side.origin, report)
    selection = _select(
        quota_sides, "mix_budget", budget, seed, allow_short, mixup_ratio=fraction, per_task=True
    )
    for why in selection.why:
        row = reports[why["origin"]][why["task_type"]]
        row["selected"] = row.get("selected", 0) + 1
    for report in reports.values():
        for row in report.values():
            row.setdefault("selected", 0)
    selection.summary["task_counts"] = weights
    selection.summary["by_task"] = reports
    selection.summary["notes"] += notes
    return selection


# ---------------------------------------------------------------------------------------
# baselines


def random_subset(
    pool: Sequence[Record], *, budget: int, seed: int = 42, allow_short: bool = False
) -> Selection:
    """A uniform random sample of the pool."""
    side = _Side("pool", pool, _sample_rng(seed).permutation(len(pool)), budget)
    return _select([side], "random", budget, seed, allow_short)


def full_pool(pool: Sequence[Record], *, seed: int = 42) -> Selection:
    """The whole pool (no budget), shuffled."""
    side = _Side("pool", pool, np.arange(len(pool)), len(pool))
    return _select([side], "full", len(pool), seed, allow_short=False)


def high_only(
    pool: Sequence[Record],
    *,
    budget: int,
    seed: int = 42,
    allow_short: bool = False,
    high_ids: Collection[str] | None = None,
) -> Selection:
    """A random sample of the high-quality records; unrated ones excluded (bands: see
    :func:`high_low_mix`)."""
    return high_low_mix(
        pool, budget=budget, high_ratio=1.0, seed=seed, allow_short=allow_short, high_ids=high_ids
    )


def low_only(
    pool: Sequence[Record],
    *,
    budget: int,
    seed: int = 42,
    allow_short: bool = False,
    high_ids: Collection[str] | None = None,
) -> Selection:
    """A random sample of the low-quality records; unrated ones excluded (bands: see
    :func:`high_low_mix`)."""
    return high_low_mix(
        pool, budget=budget, high_ratio=0.0, seed=seed, allow_short=allow_short, high_ids=high_ids
    )


def high_low_mix(
    pool: Sequence[Record],
    *,
    budget: int,
    high_ratio: float | str,
    seed: int = 42,
    allow_short: bool = False,
    high_ids: Collection[str] | None = None,
) -> Selection:
    """Random high- and low-quality records at a ratio (``0.7`` or ``"7:3"`` = high:low).

    The bands are score >= 4 and score < 4, or, when ``high_ids`` is given (the ids of the
    split stage's high part, e.g. when the split took a top fraction), those ids and every
    other rated record. Each band is sampled at random; a band that runs short is filled
    from the other one. The pure ends (ratio 1: high-only, ratio 0: low-only) use one band
    and never borrow from the other. Unrated records are excluded.
    """
    fraction = parse_ratio(high_ratio)
    n_high = _split_count(budget, fraction)
    scores = [record_score(r) for r in pool]
    if high_ids is None:
        in_high = [s is not None and s >= HIGH_SCORE for s in scores]
    else:
        in_high = [r["id"] in high_ids for r in pool]
    rated = [i for i, s in enumerate(scores) if s is not None]
    bands = {
        "high": [i for i in rated if in_high[i]],
        "low": [i for i in rated if not in_high[i]],
    }
    wanted = {"high": n_high, "low": budget - n_high}
    rng = _sample_rng(seed)
    sides = [
        _Side(band, pool, rng.permutation(bands[band]).astype(np.int64), wanted[band])
        for band in ("high", "low")
        if 0 < fraction < 1 or (band == "high") == (fraction == 1)
    ]
    method = {1.0: "high_only", 0.0: "low_only"}.get(fraction, "high_low_mix")
    return _select(
        sides,
        method,
        budget,
        seed,
        allow_short,
        high_ratio=fraction,
        bands="split's high part" if high_ids is not None else f"score >= {HIGH_SCORE}",
        unrated_excluded=scores.count(None),
    )


def label_filtered(
    pool: Sequence[Record],
    *,
    budget: int,
    min_overall: int = 9,
    seed: int = 42,
    allow_short: bool = False,
) -> Selection:
    """AlpaGasus-like: a random sample of the records rated ``overall >= min_overall``.

    When too few pass, the next rating tiers (overall ``min_overall - 1``, then lower) fill
    the rest, highest tier first and at random within a tier; those rows are flagged
    ``filled_shortfall``. Unrated records are excluded. A rating with no overall (kNN-Bayes
    propagates only the 0..5 score), or one whose score curation corrected, counts as
    overall ``score + 4`` of its effective score, the overall that score compresses from
    (score 0: overall 4 or less).
    """
    rated = np.array([i for i, r in enumerate(pool) if r.get("rating") is not None], dtype=np.int64)
    overall = np.array([_overall(pool[i]["rating"]) for i in rated], dtype=np.int64)
    tiebreak = _sample_rng(seed).random(len(rated))
    by_tier = np.lexsort((tiebreak, -overall))
    passing = overall[by_tier] >= min_overall
    sides = [
        _Side("passed_filter", pool, rated[by_tier[passing]], budget),
        _Side("below_filter", pool, rated[by_tier[~passing]], 0),
    ]
    return _select(
        sides,
        "label_filtered",
        budget,
        seed,
        allow_short,
        min_overall=min_overall,
        unrated_excluded=len(pool) - len(rated),
    )


def ds2_like(
    pool: Sequence[Record],
    *,
    budget: int,
    long_tail: np.ndarray,
    seed: int = 42,
    allow_short: bool = False,
) -> Selection:
    """DS2-like: the top of the pool by (effective score desc, long-tail desc, id)."""
    long_tail = _aligned(long_tail, pool, "long_tail")
    side = _Side("pool", pool, rank_records(pool, long_tail), budget, long_tail)
    return _select([side], "ds2_like", budget, seed, allow_short)


# ---------------------------------------------------------------------------------------
# the shared selection helper


def _select(
    sides: list[_Side],
    method: str,
    budget: int,
    seed: int,
    allow_short: bool,
    **settings: Any,
) -> Selection:
    """Take each side's top ``requested`` rows, fill shortfalls from the other sides, shuffle.

    A side's shortfall is filled from the next rows of the other sides, in the order the
    sides are listed. Raises :class:`ShortfallError` when the sides together cannot reach
    the requested total, unless ``allow_short``.
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    own = [min(side.requested, len(side.order)) for side in sides]
    missing = sum(side.requested for side in sides) - sum(own)
    extra = []
    for side, taken in zip(sides, own, strict=True):
        extra.append(min(missing, len(side.order) - taken))
        missing -= extra[-1]
    if missing and not allow_short:
        available = ", ".join(f"{side.origin} {len(side.order)}" for side in sides)
        raise ShortfallError(
            f"{method}: {budget} rows requested but only {budget - missing} available "
            f"({available}); lower --budget (select.budget) or pass --allow-short to accept fewer"
        )
    picks = [
        (side, position, position >= taken)
        for side, taken, more in zip(sides, own, extra, strict=True)
        for position in range(taken + more)
    ]
    shuffle = np.random.default_rng(seed).permutation(len(picks))
    picks = [picks[i] for i in shuffle]
    summary = {
        "method": method,
        "budget": budget,
        "seed": seed,
        **settings,
        "requested": {side.origin: side.requested for side in sides},
        "available": {side.origin: len(side.order) for side in sides},
        "selected": {side.origin: t + e for side, t, e in zip(sides, own, extra, strict=True)},
        "filled_shortfall": {side.origin: e for side, e in zip(sides, extra, strict=True)},
        "short_by": missing,
        "notes": _notes(sides, own, extra, missing),
    }
    return Selection(
        records=[side.records[side.order[position]] for side, position, _ in picks],
        why=[_why(side, position, filled) for side, position, filled in picks],
        summary=summary,
    )


def _why(side: _Side, position: int, filled: bool) -> dict[str, Any]:
    """The reason row for the record at ``position`` of a side's ranking."""
    index = side.order[position]
    record = side.records[index]
    return {
        "id": record["id"],
        "origin": side.origin,
        "rank": position + 1,
        "score": record_score(record),
        "long_tail": None if side.long_tail is None else float(side.long_tail[index]),
        "filled_shortfall": filled,
    } | (
        {}
        if side.task_rank is None
        else {"task_type": task_of(record), "task_rank": int(side.task_rank[index])}
    )


def _notes(sides: list[_Side], own: list[int], extra: list[int], missing: int) -> list[str]:
    """Plain-language notes on every shortfall and how it was covered."""
    notes = [
        f"{side.origin}: {side.requested} requested, only {len(side.order)} available"
        for side, taken in zip(sides, own, strict=True)
        if taken < side.requested
    ]
    notes += [
        f"{more} extra rows taken from {side.origin} to cover the shortfall"
        for side, more in zip(sides, extra, strict=True)
        if more
    ]
    if missing:
        notes.append(f"short by {missing} rows (--allow-short)")
    return notes


def _aligned(values: np.ndarray, records: Sequence[Record], name: str) -> np.ndarray:
    """``values`` as float64, checked to have one entry per record."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(records),):
        raise ValueError(f"{name} has shape {values.shape}, expected ({len(records)},)")
    return values


def _sample_rng(seed: int) -> np.random.Generator:
    """The generator for sampling, kept apart from the one that shuffles the result."""
    return np.random.default_rng([seed, 1])
