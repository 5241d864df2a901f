"""Task-type quotas for selection (`select.per_task`): a budget split over task types in
proportion to their shares, each task filled with its best records.

The split is by largest remainder, so the quotas sum to the budget exactly: each task gets the
whole part of its exact share, and the places left go to the largest fractional parts (ties:
the larger share, then the task's name). A task with fewer records than its quota takes all
it has, and the places it cannot fill are split again over the tasks that still have records,
in proportion to their shares, until the budget is filled or every record is taken. Records
without a task type form their own group, `untyped`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

UNTYPED = "untyped"


def task_of(record: Mapping[str, Any]) -> str:
    """A record's task type for the quotas; `untyped` when it has none."""
    return record.get("task_type") or UNTYPED


def task_counts(*groups: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many records of each task type the groups hold together, by task name."""
    counts = Counter(task_of(record) for group in groups for record in group)
    return dict(sorted(counts.items()))


def largest_remainder(weights: Mapping[str, float], total: int) -> dict[str, int]:
    """``total`` split over the keys in proportion to ``weights`` (>= 0, not all 0), summing
    to ``total`` exactly (module doc). Computed in exact fractions."""
    exact = {key: Fraction(weight) for key, weight in weights.items()}
    scale = sum(exact.values())
    if total < 0 or scale <= 0 or any(value < 0 for value in exact.values()):
        raise ValueError(f"cannot split {total} by weights {dict(weights)}")
    parts = {key: total * value / scale for key, value in exact.items()}
    out = {key: math.floor(part) for key, part in parts.items()}
    left = total - sum(out.values())
    order = sorted(parts, key=lambda key: (-(parts[key] - out[key]), -exact[key], key))
    for key in order[:left]:
        out[key] += 1
    return out


def task_quotas(
    weights: Mapping[str, float], available: Mapping[str, int], total: int
) -> dict[str, int]:
    """How many records to take of each task in ``available``: ``total`` (at most all the
    records) split by ``weights``, a task short of records giving its places to the others."""
    total = min(total, sum(available.values()))
    quota = dict.fromkeys(available, 0)
    while (left := total - sum(quota.values())) > 0:
        room = {task: available[task] - quota[task] for task in available}
        open_ = {task: weights.get(task, 0) for task in available if room[task] > 0}
        if not any(open_.values()):  # only tasks without a share still have records
            open_ = {task: room[task] for task in open_}
        for task, more in largest_remainder(open_, left).items():
            quota[task] += min(more, room[task])
    return quota


def per_task_order(
    records: Sequence[Mapping[str, Any]],
    order: np.ndarray,
    requested: int,
    weights: Mapping[str, float],
) -> tuple[np.ndarray, np.ndarray, dict[str, dict[str, Any]]]:
    """A side's ranking reordered so that its first ``requested`` rows fill the task quotas.

    ``order`` lists the record indices best first. Returns the new order (each task's best
    ``quota`` records, in the old order, then the rest in the old order), each record's rank
    within its task (aligned with ``records``), and per task: its share of ``weights``, the
    places its share asks for (``wanted``), its records (``available``) and its ``quota``.
    """
    kinds = [task_of(records[i]) for i in order]
    available = dict(sorted(Counter(kinds).items()))
    quota = task_quotas(weights, available, requested)
    scale = sum(weights.values())
    wanted = largest_remainder(weights, requested) if scale > 0 and requested > 0 else {}
    first, rest, seen = [], [], Counter()
    task_rank = np.zeros(len(records), dtype=np.int64)
    for index, kind in zip(order, kinds, strict=True):
        seen[kind] += 1
        task_rank[index] = seen[kind]
        (first if seen[kind] <= quota[kind] else rest).append(int(index))
    report = {
        task: {
            "share": round(weights.get(task, 0) / scale, 4) if scale > 0 else 0.0,
            "wanted": wanted.get(task, 0),
            "available": available.get(task, 0),
            "quota": quota.get(task, 0),
        }
        for task in sorted(set(weights) | set(available))
    }
    return np.array(first + rest, dtype=np.int64), task_rank, report


def quota_notes(origin: str, report: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Plain-language notes on every task that could not fill the places its share asks for."""
    return [
        f"{origin}: task type {task} is {row['share']:.0%} of the candidates and wanted "
        f"{row['wanted']} row{'' if row['wanted'] == 1 else 's'}, only {row['available']} "
        "available; its other places went to the other task types"
        for task, row in report.items()
        if row["available"] < row["wanted"]
    ]
