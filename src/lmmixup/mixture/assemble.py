"""The records in memory: plans, their members (model- or rule-written), splits."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from lmmixup.backends.base import Generator
from lmmixup.mixture.config import MixtureConfig
from lmmixup.mixture.degrade import Variant
from lmmixup.mixture.llm_variants import LlmReport, llm_variants
from lmmixup.mixture.members import Slot, members_of, slots_of
from lmmixup.mixture.plans import Plan, PlanReport, make_plans
from lmmixup.mixture.seeds import Seed
from lmmixup.mixture.splits import split_labels
from lmmixup.progress import progress
from lmmixup.types import Embedder


@dataclass
class MixtureResult:
    """The records (each with its split) and what the build did."""

    records: list[dict]
    plans: PlanReport
    llm: LlmReport | None
    operator_uses: Counter


def to_record(plan: Plan, variants: Sequence[Variant]) -> dict:
    """The record of a plan (split not yet assigned)."""
    return {
        "id": plan.id,
        "task_type": plan.task_type,
        "members": [
            {"id": f"{plan.id}.{n}", "prompt": v.prompt, "completion": v.completion}
            for n, v in enumerate(variants)
        ],
        "answer": plan.answer,
        "think": plan.think,
        "target_ids": list(plan.target_ids),
        "operators": sorted({name for v in variants for name in v.operators}),
        "cross_topic": plan.cross_topic,
        "split": None,
    }


def make_records(
    seeds: Sequence[Seed],
    cfg: MixtureConfig,
    embedder: Embedder | None = None,
    generator: Generator | None = None,
) -> MixtureResult:
    """Every record, members made, splits assigned; pure given the embedder and generator.

    Without an embedder there are no cross-topic merges.
    """
    plans, plan_report = make_plans(seeds, cfg, embedder)
    rng = random.Random(f"{cfg.seed}/slots")
    slots = {plan.id: slots_of(plan, rng) for plan in plans}
    written: dict[Slot, Variant] = {}
    llm_report = None
    if generator is not None:
        wanted = [
            slot
            for plan in plans
            for slot in slots[plan.id]
            if slot.rng(cfg.seed, "llm").random() < cfg.llm_fraction
        ]
        written, llm_report = llm_variants(wanted, generator, cfg)
    records, uses = [], Counter()
    with progress("mixture: degrade", len(plans), unit="record") as advance:
        for plan in plans:
            variants = members_of(plan, slots[plan.id], written, cfg)
            advance()
            if len(variants) < cfg.min_size:
                plan_report.skipped["too_few_variants"] += len(plan.target_ids)
                continue
            uses.update(name for v in variants for name in v.operators)
            records.append(to_record(plan, variants))
    labels = split_labels([r["task_type"] for r in records], cfg.split_fractions(), cfg.seed)
    for record, label in zip(records, labels, strict=True):
        record["split"] = label
    return MixtureResult(records, plan_report, llm_report, uses)
