"""Counting and timing reward batches: the failure policy every reward shares.

An exception while computing a batch (embedder, scorer, bad columns) or a non-finite value
is counted in :class:`RewardStats`, logged, and re-raised as :class:`RewardError`, so
training stops. A reward is never replaced by a default and never NaN (NaN would poison the
GRPO loss). Each batch's wall time and value mean/std are recorded.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class RewardError(RuntimeError):
    """A reward could not be computed for a batch (already counted and logged)."""


@dataclass
class ComponentStats:
    """One reward component's counters: batches, completions, failed batches, time, values.

    ``calls`` and ``items`` count every batch tried, failed ones included; the value
    statistics cover successful batches: ``last_*`` the latest one, ``mean``/``std`` all.
    """

    calls: int = 0
    items: int = 0
    failures: int = 0
    seconds: float = 0.0
    last_seconds: float = math.nan
    last_mean: float = math.nan
    last_std: float = math.nan
    _count: int = field(default=0, repr=False)
    _sum: float = field(default=0.0, repr=False)
    _sum_squares: float = field(default=0.0, repr=False)

    @property
    def mean(self) -> float:
        """Mean of every value computed so far (NaN before the first)."""
        return self._sum / self._count if self._count else math.nan

    @property
    def std(self) -> float:
        """Population standard deviation of every value computed so far (NaN before the first)."""
        if not self._count:
            return math.nan
        return math.sqrt(max(0.0, self._sum_squares / self._count - self.mean**2))

    def _attempt(self, size: int, seconds: float) -> None:
        self.calls += 1
        self.items += size
        self.seconds += seconds
        self.last_seconds = seconds

    def add_batch(self, values: np.ndarray, seconds: float) -> None:
        """Count a successful batch of rewards."""
        self._attempt(len(values), seconds)
        if len(values):
            self.last_mean, self.last_std = float(values.mean()), float(values.std())
            self._count += len(values)
            self._sum += float(values.sum())
            self._sum_squares += float(np.square(values).sum())

    def add_failure(self, size: int, seconds: float) -> None:
        """Count a batch that raised."""
        self._attempt(size, seconds)
        self.failures += 1

    def as_dict(self) -> dict[str, float]:
        """The counters and value statistics as plain numbers."""
        return {
            "calls": self.calls,
            "items": self.items,
            "failures": self.failures,
            "seconds": self.seconds,
            "last_seconds": self.last_seconds,
            "last_mean": self.last_mean,
            "last_std": self.last_std,
            "mean": self.mean,
            "std": self.std,
        }


@dataclass
class RewardStats:
    """Counters per reward component (format, alignment, quality, mixup), for logging per step."""

    components: dict[str, ComponentStats] = field(default_factory=dict)

    def component(self, name: str) -> ComponentStats:
        """The counters of one component, created on first use."""
        return self.components.setdefault(name, ComponentStats())

    def metrics(self, prefix: str = "rewards") -> dict[str, float]:
        """Flat ``{prefix}/{component}/{counter}: value`` for a trainer's log."""
        return {
            f"{prefix}/{name}/{key}": value
            for name, stats in sorted(self.components.items())
            for key, value in stats.as_dict().items()
        }

    def reset(self) -> None:
        """Forget every counter."""
        self.components.clear()


REWARD_STATS = RewardStats()


def run_batch(
    stats: RewardStats,
    name: str,
    size: int,
    compute: Callable[[], np.ndarray],
    log_metric: Any = None,
) -> list[float]:
    """Compute one batch of rewards, timing it and counting it (or its failure) in ``stats``."""
    start = time.perf_counter()
    try:
        values = np.asarray(compute(), dtype=np.float64)
        if values.shape != (size,) or not np.all(np.isfinite(values)):
            raise ValueError(f"expected {size} finite values, got {values.shape}: {values}")
    except Exception as error:
        stats.component(name).add_failure(size, time.perf_counter() - start)
        if isinstance(error, RewardError):  # a component already counted and logged it
            raise
        failures = stats.component(name).failures
        log.error(
            "%s reward failed on %d completions (failure #%d): %r", name, size, failures, error
        )
        raise RewardError(f"the {name} reward failed on a batch of {size}: {error}") from error
    seconds = time.perf_counter() - start
    stats.component(name).add_batch(values, seconds)
    if callable(log_metric):
        log_metric(f"reward_seconds/{name}", seconds)
    return values.tolist()
