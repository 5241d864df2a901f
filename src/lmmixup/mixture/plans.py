"""Plans: every record decided before its members exist (its seeds, task type and cluster size).

About `cross_topic_fraction` of the records merge two similar seeds into one qa target; every
other seed gets one task type among those it supports, drawn by `task_weights` within
`task_quotas`. A seed is in at most one plan.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from lmmixup.hashing import hash_value
from lmmixup.mixture.config import MixtureConfig
from lmmixup.mixture.pairs import similar_pairs
from lmmixup.mixture.seeds import Seed
from lmmixup.mixture.targets import Target, build_target, merge_targets, qa_target, supported_tasks
from lmmixup.types import Embedder


@dataclass(frozen=True)
class Plan:
    """One record before its members exist: the target(s), the merged answer, the cluster size."""

    id: str
    task_type: str
    answer: str
    think: str | None
    sources: tuple[Target, ...]
    target_ids: tuple[str, ...]
    size: int

    @property
    def cross_topic(self) -> bool:
        """Whether the record merges two seeds."""
        return len(self.sources) > 1


def record_id(task_type: str, target_ids: Sequence[str]) -> str:
    """A stable record id from its task type and target ids."""
    return "mx-" + hash_value([task_type, list(target_ids)])[:12]


def draw_size(rng: random.Random, cfg: MixtureConfig) -> int:
    """A cluster size: round(Normal(mean, std)) clipped to [min_size, max_size]."""
    return min(cfg.max_size, max(cfg.min_size, round(rng.gauss(cfg.mean_size, cfg.std_size))))


def _plan(targets: Sequence[Target], ids: Sequence[str], merged: Target, size: int) -> Plan:
    return Plan(
        record_id(merged.task_type, ids),
        merged.task_type,
        merged.answer,
        merged.think,
        tuple(targets),
        tuple(ids),
        size,
    )


@dataclass
class PlanReport:
    """Seeds that made no record, by reason, and the similarity of each merged pair."""

    skipped: Counter = field(default_factory=Counter)
    similarities: list[float] = field(default_factory=list)


def merged_plans(
    seeds: Sequence[Seed],
    cfg: MixtureConfig,
    embedder: Embedder | None,
    rng: random.Random,
    report: PlanReport,
) -> tuple[list[Plan], set[int]]:
    """The cross-topic plans and the indices of the seeds they use."""
    count = min(
        len(seeds) // 2,
        round(cfg.cross_topic_fraction * len(seeds) / (1 + cfg.cross_topic_fraction)),
    )
    count = min(count, cfg.task_quotas.get("qa", count))
    if count == 0 or embedder is None:
        return [], set()
    plans, used = [], set()
    pairs = similar_pairs(
        seeds,
        count,
        embedder,
        rng,
        pool_factor=cfg.cross_topic_pool,
        min_similarity=cfg.cross_topic_min_similarity,
    )
    for a, b, similarity in pairs:
        first, second = qa_target(seeds[a], cfg.cot), qa_target(seeds[b], cfg.cot)
        merged = merge_targets(first, second) if first and second else None
        if merged is None:
            continue
        plans.append(
            _plan((first, second), (seeds[a].id, seeds[b].id), merged, draw_size(rng, cfg))
        )
        used |= {a, b}
        report.similarities.append(similarity)
    return plans, used


def single_plans(
    seeds: Iterable[Seed],
    cfg: MixtureConfig,
    rng: random.Random,
    taken: Counter,
    report: PlanReport,
) -> list[Plan]:
    """One plan per seed, its task type drawn by weight among those it supports and has room for."""
    plans = []
    for seed in seeds:
        options = [
            task
            for task in supported_tasks(seed)
            if cfg.task_weights.get(task, 0) > 0
            and taken[task] < cfg.task_quotas.get(task, math.inf)
        ]
        if not options:
            report.skipped["no_task_type_left"] += 1
            continue
        task = rng.choices(options, weights=[cfg.task_weights[t] for t in options])[0]
        target = build_target(seed, task, rng, cfg, label=taken["tfq"] % 2 == 0)
        if target is None:
            report.skipped[f"layout_{task}"] += 1
            continue
        taken[task] += 1
        plans.append(_plan((target,), (seed.id,), target, draw_size(rng, cfg)))
    return plans


def make_plans(
    seeds: Sequence[Seed], cfg: MixtureConfig, embedder: Embedder | None
) -> tuple[list[Plan], PlanReport]:
    """Every record's plan, in a seeded random order, at most `max_examples` of them."""
    rng = random.Random(cfg.seed)
    order = rng.sample(list(seeds), len(seeds))
    report = PlanReport()
    if cfg.max_examples is not None:
        wanted = math.ceil(cfg.max_examples * (1 + cfg.cross_topic_fraction))
        report.skipped["over_max_examples"] += max(0, len(order) - wanted)
        order = order[:wanted]
    merged, used = merged_plans(order, cfg, embedder, rng, report)
    taken = Counter(qa=len(merged))
    singles = single_plans(
        (seed for i, seed in enumerate(order) if i not in used), cfg, rng, taken, report
    )
    plans = merged + singles
    rng.shuffle(plans)
    if cfg.max_examples is not None and len(plans) > cfg.max_examples:
        cut = plans[cfg.max_examples :]
        report.skipped["over_max_examples"] += sum(len(plan.target_ids) for plan in cut)
        plans = plans[: cfg.max_examples]
    return plans, report
