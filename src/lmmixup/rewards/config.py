"""The reward configuration GRPO trains with and `lmmixup eval distiller` scores with: the
settings, and the set of reward components built from them."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from lmmixup.backends.embed import load_embedder
from lmmixup.config import ADDED_LATER, DEFAULT_EMBEDDER, Section
from lmmixup.errors import LmmixupError
from lmmixup.method.knn_bayes import ScorerFormatError, ScorerLibrary, load_task_scorers
from lmmixup.records import TASK_TYPES
from lmmixup.rewards.functions import (
    MIXUP_WEIGHTS,
    Completion,
    RewardFn,
    make_alignment_reward,
    make_format_reward,
    make_quality_reward,
    row_weights,
    task_types,
)
from lmmixup.rewards.library import library_embedder
from lmmixup.rewards.stats import RewardStats
from lmmixup.types import Embedder

COMPONENTS = ("quality", "alignment", "format")


class RewardSettings(Section):
    """The GRPO rewards (SPEC stage 8), also used to score a distiller in `lmmixup eval distiller`."""

    quality_library: str | None = Field(
        None,
        description="kNN-Bayes library folder for the quality reward, built by `lmmixup rewards build-library RATED.jsonl -o DIR` (required by GRPO).",
    )
    quality_mode: Literal["banded", "continuous"] = Field(
        "banded",
        description="banded: the paper's 1 / 0.3 / 0 by expected score; continuous: expected score / 5.",
    )
    alignment_mode: Literal["threshold", "continuous"] = Field(
        "threshold",
        description="threshold: 1 when cosine(answer, reference) >= 0.8 (paper); continuous: the cosine clipped to [0, 1].",
    )
    weights: list[float] = Field(
        default_factory=lambda: list(MIXUP_WEIGHTS),
        description="Weights of quality, alignment and format (paper: [0.5, 0.4, 0.1]).",
    )
    embedder: str = Field(
        DEFAULT_EMBEDDER,
        description="Sentence embedder of the alignment reward (quality uses the library's own).",
    )
    k: int = Field(16, ge=1, description="Quality: library neighbours used to score an answer.")
    weights_by_task: dict[str, list[float]] | None = Field(
        None,
        description="Per task type, weights of quality, alignment and format that replace `weights` for that task's rows, e.g. {mcq: [0.4, 0.3, 0.3]}: three numbers >= 0 summing to 1. null = the global weights for every task. The paper's own per-task values are not reproduced here. When set, GRPO logs each component's weighted share.",
        json_schema_extra=ADDED_LATER,
    )

    @field_validator("weights")
    @classmethod
    def _three_weights(cls, weights: list[float]) -> list[float]:
        if len(weights) != 3 or any(w < 0 for w in weights):
            raise ValueError("weights must be three numbers >= 0: quality, alignment, format")
        return weights

    @field_validator("weights_by_task")
    @classmethod
    def _weights_per_task(cls, table: dict[str, list[float]] | None) -> Any:
        for task, weights in (table or {}).items():
            if task not in TASK_TYPES:
                raise ValueError(
                    f"weights_by_task: unknown task type {task!r}; known: {', '.join(TASK_TYPES)}"
                )
            if len(weights) != 3 or not all(math.isfinite(w) and w >= 0 for w in weights):
                raise ValueError(
                    f"weights_by_task.{task}: expected three numbers >= 0 (quality, alignment, "
                    f"format), got {weights}"
                )
            if not math.isclose(sum(weights), 1.0, abs_tol=1e-6):
                raise ValueError(
                    f"weights_by_task.{task}: the weights must sum to 1, got {sum(weights):g}"
                )
        return table


@dataclass
class RewardSet:
    """The reward components by name (quality absent when no library is given), weights,
    counters, and weights per task type that replace the global ones for that task's rows."""

    functions: dict[str, RewardFn]
    weights: dict[str, float]
    stats: RewardStats
    weights_by_task: dict[str, list[float]] = field(default_factory=dict)

    def seconds(self) -> float:
        """Wall time spent in these rewards so far."""
        return sum(self.stats.component(name).seconds for name in self.functions)

    def score(self, completions: Sequence[Completion], **columns: Any) -> dict[str, list[float]]:
        """Each component's values and, when all three are present, the weighted `total`."""
        values = {name: fn(completions, **columns) for name, fn in self.functions.items()}
        if set(values) == set(COMPONENTS):
            parts = np.array([values[name] for name in COMPONENTS])
            weights = np.array([self.weights[name] for name in COMPONENTS])
            if not self.weights_by_task:
                values["total"] = (weights @ parts).tolist()
            else:
                mix = self._row_weights(columns, len(completions))
                values["total"] = np.sum(mix * parts.T, axis=1).tolist()
        return values

    def for_trainer(self) -> tuple[list[RewardFn], list[float]]:
        """The reward functions and weights to give TRL, in COMPONENTS order.

        Without weights per task type: the components and the global weights. With them,
        each component's values come already multiplied by its row's weight and TRL sums
        them with weight 1, so the total is each row's own weighted sum (and TRL logs each
        component's weighted share).
        """
        if not self.weights_by_task:
            return [self.functions[n] for n in COMPONENTS], [self.weights[n] for n in COMPONENTS]
        return [self._weighted(n, i) for i, n in enumerate(COMPONENTS)], [1.0] * len(COMPONENTS)

    def _row_weights(self, columns: dict[str, Any], size: int) -> np.ndarray:
        kinds = task_types(columns, size)
        weights = [self.weights[name] for name in COMPONENTS]
        return row_weights(kinds, weights, self.weights_by_task)

    def _weighted(self, name: str, column: int) -> RewardFn:
        fn = self.functions[name]

        @functools.wraps(fn)  # TRL names a reward's log by its function name
        def weighted(completions: Sequence[Completion], **columns: Any) -> list[float]:
            values = np.asarray(fn(completions, **columns), dtype=np.float64)
            return (values * self._row_weights(columns, len(completions))[:, column]).tolist()

        return weighted


def build_reward_set(
    settings: RewardSettings,
    library: ScorerLibrary | None,
    quality_embedder: Embedder | None,
    alignment_embedder: Embedder,
    stats: RewardStats | None = None,
) -> RewardSet:
    """The reward components from loaded parts; quality only with a library and its embedder."""
    stats = stats or RewardStats()
    functions: dict[str, RewardFn] = {}
    if library is not None and quality_embedder is not None:
        functions["quality"] = make_quality_reward(
            library, quality_embedder, mode=settings.quality_mode, k=settings.k, stats=stats
        )
    functions["alignment"] = make_alignment_reward(
        alignment_embedder, mode=settings.alignment_mode, stats=stats
    )
    functions["format"] = make_format_reward(stats)
    weights = dict(zip(COMPONENTS, settings.weights, strict=True))
    return RewardSet(functions, weights, stats, dict(settings.weights_by_task or {}))


def load_reward_set(settings: RewardSettings, require_quality: bool) -> RewardSet:
    """The reward components with the configured library and embedders loaded."""
    library = quality_embedder = None
    if settings.quality_library is None:
        if require_quality:
            raise LmmixupError(
                "GRPO needs rewards.quality_library: build one with "
                "`lmmixup rewards build-library RATED.jsonl -o DIR` and set rewards.quality_library=DIR"
            )
    else:
        try:
            library = load_task_scorers(settings.quality_library)
        except (OSError, ScorerFormatError) as error:
            raise LmmixupError(
                f"rewards.quality_library={settings.quality_library}: {error}; "
                "build one with `lmmixup rewards build-library RATED.jsonl -o DIR`"
            ) from None
        quality_embedder = load_embedder(library_embedder(library))
    return build_reward_set(settings, library, quality_embedder, load_embedder(settings.embedder))
