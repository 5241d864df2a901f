"""The quality reward's kNN-Bayes library: fitted from rated JSONL, saved, described."""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmmixup.backends.embed import record_text
from lmmixup.config import DEFAULT_EMBEDDER
from lmmixup.errors import LmmixupError
from lmmixup.io.validate import RATED_RECORD, read_checked
from lmmixup.method.knn_bayes import DEFAULT_TASK, META_FILE, KnnBayesScorer, ScorerLibrary
from lmmixup.rewards.functions import encode_texts
from lmmixup.types import Embedder

MIN_TASK_SAMPLES = 20
_TASK_NAME = re.compile(r"[A-Za-z0-9][\w.-]*")


def read_rated(paths: Sequence[str | Path]) -> tuple[list[dict], int]:
    """The records of rated JSONL files that have a rating, and how many had none (failures)."""
    rated, unrated = [], 0
    for path in paths:
        for record in read_checked(path, RATED_RECORD):
            if record.get("rating") is None:
                unrated += 1
            else:
                rated.append(record)
    return rated, unrated


def library_groups(
    kinds: Sequence[str | None], by_task: bool, min_samples: int = MIN_TASK_SAMPLES
) -> dict[str, list[int]]:
    """Rows of each scorer to fit: "default" on all, plus each task type with ``min_samples``."""
    groups: dict[str, list[int]] = {DEFAULT_TASK: list(range(len(kinds)))}
    if not by_task:
        return groups
    by_kind: dict[str, list[int]] = {}
    for row, kind in enumerate(kinds):
        if kind and kind != DEFAULT_TASK:
            by_kind.setdefault(kind, []).append(row)
    for kind, rows in sorted(by_kind.items()):
        if not _TASK_NAME.fullmatch(kind):
            raise LmmixupError(f"task type {kind!r} cannot name a scorer folder")
        if len(rows) >= min_samples:
            groups[kind] = rows
    return groups


def build_library(
    records: Sequence[Mapping[str, Any]],
    embedder: Embedder,
    *,
    embedder_name: str | None = None,
    by_task: bool = True,
    min_task_samples: int = MIN_TASK_SAMPLES,
    k_transition: int = 3,
) -> ScorerLibrary:
    """One kNN-Bayes scorer per task type with enough samples, plus "default" on all records.

    Texts are prompt + newline + completion (as the rate stage embeds them), in one encode call;
    labels are ``rating.score``. Task types with fewer samples are scored by "default".
    """
    if len(records) < 2:
        raise LmmixupError(f"a library needs at least 2 rated records, got {len(records)}")
    vectors = encode_texts(embedder, [record_text(record) for record in records])
    labels = np.array([record["rating"]["score"] for record in records])
    groups = library_groups([r.get("task_type") for r in records], by_task, min_task_samples)
    return ScorerLibrary(
        {
            name: KnnBayesScorer.fit(
                vectors[rows], labels[rows], k_transition=k_transition, embedder=embedder_name
            )
            for name, rows in groups.items()
        }
    )


def save_library(library: ScorerLibrary, root: str | Path, overwrite: bool = False) -> None:
    """Write a library to ``root/<task_type>/``; an existing library there needs ``overwrite``.

    Overwriting removes the old scorer folders first, so no stale task scorer is left behind.
    """
    folder = Path(root)
    old = sorted(p for p in folder.glob("*") if (p / META_FILE).is_file())
    if old and not overwrite:
        raise LmmixupError(f"{folder} already holds a library; pass --overwrite to replace it")
    for path in old:
        shutil.rmtree(path)
    library.save(folder)


def class_counts(scorer: KnnBayesScorer) -> dict[int, int]:
    """How many library items each score class holds."""
    classes, counts = np.unique(scorer.labels, return_counts=True)
    return dict(zip(classes.tolist(), counts.tolist(), strict=True))


def library_embedder(library: ScorerLibrary) -> str:
    """The embedder a library was built with (the bundled MiniLM when it names none)."""
    names = {scorer.embedder for scorer in library.scorers.values() if scorer.embedder}
    if len(names) > 1:
        raise LmmixupError(f"the library's scorers were built with different embedders: {names}")
    return names.pop() if names else DEFAULT_EMBEDDER
