"""Splits: each record to sft, grpo_train or grpo_test, stratified by task type.

A seed is in exactly one record, so no target is in two splits.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from lmmixup.records import TASK_TYPES


def split_labels(task_types: Sequence[str], fractions: dict[str, float], seed: int) -> list[str]:
    """A split per record: shares exact to within one record, stratified by task type.

    Records are visited by task type (in a seeded random order inside each type); each goes
    to the split furthest below its share of the records visited so far.
    """
    rng = random.Random(f"{seed}/splits")
    keys = {i: (TASK_TYPES.index(task), rng.random()) for i, task in enumerate(task_types)}
    counts = dict.fromkeys(fractions, 0)
    labels = [""] * len(task_types)
    for visited, i in enumerate(sorted(keys, key=keys.get), start=1):
        split = max(fractions, key=lambda name: fractions[name] * visited - counts[name])
        counts[split] += 1
        labels[i] = split
    return labels
