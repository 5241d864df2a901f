"""Members: the degraded variants that make up a record's cluster.

Each member degrades the target's clean (prompt, completion) pair by 1-3 rule-based operators
(`lmmixup.mixture.degrade`; the completion always changes, so no member carries the target's
content intact), unless the degrader model wrote it (`lmmixup.mixture.llm_variants`). A merged
record takes about half its members from each of its two targets.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from lmmixup.mixture.config import MixtureConfig
from lmmixup.mixture.degrade import Variant, degrade_pair
from lmmixup.mixture.plans import Plan
from lmmixup.mixture.targets import Target

_DUPLICATE_RETRIES = 4


@dataclass(frozen=True)
class Slot:
    """One member to make: its record, the target it degrades, its number in the record."""

    plan: Plan
    source: Target
    number: int

    def rng(self, seed: int, purpose: str) -> random.Random:
        """This slot's own random stream for one purpose (independent of the build order)."""
        return random.Random(f"{seed}/{purpose}/{self.plan.id}/{self.number}")


def slots_of(plan: Plan, rng: random.Random) -> list[Slot]:
    """The plan's members to make; a merge takes about half from each target (one at least)."""
    if not plan.cross_topic:
        return [Slot(plan, plan.sources[0], n) for n in range(plan.size)]
    first = plan.size // 2 + (plan.size % 2 if rng.random() < 0.5 else 0)
    sources = [plan.sources[0]] * first + [plan.sources[1]] * (plan.size - first)
    return [Slot(plan, source, n) for n, source in enumerate(sources)]


def rule_variant(slot: Slot, cfg: MixtureConfig, seen: set[tuple[str, str]]) -> Variant | None:
    """A rule-based variant of the slot's target, retried a few times to avoid repeats."""
    rng = slot.rng(cfg.seed, "rules")
    variant = None
    for _ in range(_DUPLICATE_RETRIES):
        attempt = degrade_pair(
            slot.source.prompt, slot.source.completion, rng, cfg.operators, cfg.max_operators
        )
        variant = attempt or variant
        if attempt is not None and (attempt.prompt, attempt.completion) not in seen:
            break
    return variant


def members_of(
    plan: Plan, slots: Sequence[Slot], written: dict[Slot, Variant], cfg: MixtureConfig
) -> list[Variant]:
    """The plan's variants, model-written where available, in a seeded random order."""
    seen = {(source.prompt, source.completion) for source in plan.sources}
    variants = []
    for slot in slots:
        variant = written.get(slot) or rule_variant(slot, cfg, seen)
        if variant is not None:
            seen.add((variant.prompt, variant.completion))
            variants.append(variant)
    random.Random(f"{cfg.seed}/order/{plan.id}").shuffle(variants)
    return variants
