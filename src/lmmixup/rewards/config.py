"""The reward configuration GRPO trains with and `lmmixup eval distiller` scores with: the
settings, and the set of reward components built from them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from lmmixup.backends.embed import load_embedder
from lmmixup.config import DEFAULT_EMBEDDER, Section
from lmmixup.errors import LmmixupError
from lmmixup.method.knn_bayes import ScorerFormatError, ScorerLibrary, load_task_scorers
from lmmixup.rewards.functions import (
    MIXUP_WEIGHTS,
    Completion,
    RewardFn,
    make_alignment_reward,
    make_format_reward,
    make_quality_reward,
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

    @field_validator("weights")
    @classmethod
    def _three_weights(cls, weights: list[float]) -> list[float]:
        if len(weights) != 3 or any(w < 0 for w in weights):
            raise ValueError("weights must be three numbers >= 0: quality, alignment, format")
        return weights


@dataclass
class RewardSet:
    """The reward components by name (quality absent when no library is given), weights, counters."""

    functions: dict[str, RewardFn]
    weights: dict[str, float]
    stats: RewardStats

    def seconds(self) -> float:
        """Wall time spent in these rewards so far."""
        return sum(self.stats.component(name).seconds for name in self.functions)

    def score(self, completions: Sequence[Completion], **columns: Any) -> dict[str, list[float]]:
        """Each component's values and, when all three are present, the weighted `total`."""
        values = {name: fn(completions, **columns) for name, fn in self.functions.items()}
        if set(values) == set(COMPONENTS):
            parts = np.array([values[name] for name in COMPONENTS])
            weights = np.array([self.weights[name] for name in COMPONENTS])
            values["total"] = (weights @ parts).tolist()
        return values


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
    return RewardSet(functions, dict(zip(COMPONENTS, settings.weights, strict=True)), stats)


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
