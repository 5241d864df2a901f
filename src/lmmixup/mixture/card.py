"""The card: a build's counts (splits, task types, sizes, operators, seeds) as JSON and Markdown."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from lmmixup.markdown import markdown_table
from lmmixup.mixture.assemble import MixtureResult
from lmmixup.mixture.config import SPLITS, MixtureConfig
from lmmixup.mixture.seeds import SeedReport
from lmmixup.records import TASK_TYPES


def make_card(
    result: MixtureResult, seeds: SeedReport, used_seeds: int, cfg: MixtureConfig
) -> dict:
    """The build's summary: counts per split and task type, sizes, operators, seeds, config."""
    records = result.records
    by_split = {
        split: dict(sorted(Counter(r["task_type"] for r in records if r["split"] == split).items()))
        for split in SPLITS
    }
    sizes = Counter(len(r["members"]) for r in records)
    seed_info = seeds.as_dict() | {
        "usable": used_seeds,
        "in_records": sum(len(r["target_ids"]) for r in records),
        "not_used": dict(sorted(result.plans.skipped.items())),
    }
    return {
        "records": len(records),
        "splits": {split: sum(counts.values()) for split, counts in by_split.items()},
        "task_types": dict(sorted(Counter(r["task_type"] for r in records).items())),
        "by_split_and_task": by_split,
        "cross_topic": sum(r["cross_topic"] for r in records),
        "cross_topic_mean_similarity": _mean(result.plans.similarities),
        "with_think": sum(bool(r["think"]) for r in records),
        "cluster_sizes": {str(size): sizes[size] for size in sorted(sizes)},
        "mean_cluster_size": _mean([len(r["members"]) for r in records]),
        "operator_uses": dict(sorted(result.operator_uses.items())),
        "llm_degradations": None if result.llm is None else result.llm.as_dict(),
        "seeds": seed_info,
        "config": cfg.model_dump(mode="json"),
    }


def _mean(values: Sequence[float]) -> float | None:
    """The mean to four places, None for no values."""
    return round(sum(values) / len(values), 4) if values else None


def card_markdown(card: dict) -> str:
    """The card as a short Markdown report."""
    tasks = list(TASK_TYPES)
    split_rows = [
        [split, *(counts.get(t, 0) for t in tasks), card["splits"][split]]
        for split, counts in card["by_split_and_task"].items()
    ]
    seeds = card["seeds"]
    lines = [
        "# MIXTURE build",
        "",
        f"{card['records']:,} records ({card['cross_topic']:,} cross-topic, "
        f"{card['with_think']:,} with think) from {seeds['in_records']:,} seeds of "
        f"{', '.join(seeds['sources'])}; seed {card['config']['seed']}.",
        "",
        "## Records per split and task type",
        "",
        *markdown_table(["split", *tasks, "total"], split_rows),
        "",
        f"## Cluster sizes (mean {card['mean_cluster_size']})",
        "",
        *markdown_table(["size", "records"], card["cluster_sizes"].items()),
        "",
        "## Operators (variants using each)",
        "",
        *markdown_table(["operator", "variants"], card["operator_uses"].items()),
        "",
        "## Seeds",
        "",
        *markdown_table(["step", "count"], _seed_rows(seeds)),
        "",
    ]
    llm = card["llm_degradations"]
    if llm is not None:
        lines += [
            "## Model degradations",
            "",
            f"{llm['model']}: {llm['written']:,} of {llm['requested']:,} written; "
            f"{llm['fell_back_to_rules']:,} failed and were replaced by rule-based variants "
            f"({llm['failed'] or 'none'}).",
            "",
        ]
    return "\n".join(lines)


def _seed_rows(seeds: dict) -> list[tuple[str, int]]:
    """The seed counts in the order a seed goes through the build."""
    rows = [
        ("imported", seeds["imported"]),
        ("rejected rows", seeds["rejected_rows"]),
        ("filtered by length", seeds["filtered_by_length"]),
    ]
    rows += [(f"dropped: {reason}", n) for reason, n in seeds["dropped"].items()]
    rows += [("usable", seeds["usable"])]
    rows += [(f"not used: {reason}", n) for reason, n in seeds["not_used"].items()]
    return rows + [("in records", seeds["in_records"])]
