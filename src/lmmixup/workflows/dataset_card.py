"""The dataset card (README.md) of an exported training set: YAML metadata for the Hub, then
what the method did, counts per stage, sources and licences as known, how distilled rows trace
to the pool, the run's warnings and its config.

Everything comes from the run directory (summary.json, the stage manifests, config.yaml) and
the exported rows; what the run did not record (a source's licence, the language) is left
out or said to be unknown, never guessed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lmmixup.io.hf_datasets import parse_hub_id
from lmmixup.markdown import markdown_table
from lmmixup.workflows.health import RunFiles

SIZE_CATEGORIES = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
]
TAGS = ["lmmixup", "instruction-distillation", "instruction-tuning"]
DATA_FILES = "data-*.arrow"
"""The files `save_to_disk` writes, named in the card's `configs` so the Hub can read them."""
STAGE_ORDER = ("import", "rate", "split", "cluster", "distill", "rerate", "select")


@dataclass
class CardFacts:
    """What the card says: the run's folder, summary and config, the rows, the user's labels."""

    run_dir: Path
    summary: dict
    config_text: str
    rows: list[dict]
    warnings: list[dict]
    license: str | None = None
    languages: list[str] = field(default_factory=list)
    messages: bool = False

    @property
    def config(self) -> dict:
        if not self.config_text:
            return {}
        return yaml.safe_load(self.config_text) or {}


def size_category(rows: int) -> str:
    """The Hub's size bucket for a number of rows."""
    for limit, name in SIZE_CATEGORIES:
        if rows < limit:
            return name
    return "n>10M"


def _hub_sources(facts: CardFacts) -> list[str]:
    names = {row.get("source") for row in facts.rows}
    return sorted(name for name in names if isinstance(name, str) and parse_hub_id(name))


def metadata(facts: CardFacts) -> dict:
    """The card's YAML header (the Hub's dataset card fields)."""
    meta: dict = {}
    if facts.license:
        meta["license"] = facts.license
    if facts.languages:
        meta["language"] = list(facts.languages)
    meta["task_categories"] = ["text-generation"]
    meta["size_categories"] = [size_category(len(facts.rows))]
    origins = Counter(row.get("origin") for row in facts.rows)
    meta["tags"] = TAGS + (["synthetic"] if origins.get("distilled") else [])
    hub = _hub_sources(facts)
    if hub:
        meta["source_datasets"] = hub
    meta["configs"] = [
        {"config_name": "default", "data_files": [{"split": "train", "path": DATA_FILES}]}
    ]
    meta["lmmixup"] = {
        "rows": len(facts.rows),
        "by_origin": dict(sorted(origins.items(), key=lambda item: str(item[0]))),
        "stages": stage_counts(facts.summary, facts.run_dir),
        "warnings": [warning.get("code") for warning in facts.warnings],
    }
    return meta


def stage_counts(summary: dict, run_dir: Path) -> dict[str, dict]:
    """Each stage's numeric counts (summary.json, else the stage's manifest)."""
    stages = summary.get("stages") or {}
    run = RunFiles(run_dir)
    result = {}
    for name in [*STAGE_ORDER, *(s for s in stages if s not in STAGE_ORDER)]:
        counts = (stages.get(name) or {}).get("counts") or run.counts(name)
        numbers = {
            key: value
            for key, value in counts.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        if numbers:
            result[name] = numbers
    return result


def _models(config: dict) -> list[str]:
    rate = (config.get("rate") or {}).get("judge") or {}
    distill = (config.get("distill") or {}).get("generator") or {}
    lines = []
    if rate.get("model"):
        lines.append(f"- judge (rate, rerate): `{rate['model']}` ({rate.get('backend', 'hf')})")
    if distill.get("model"):
        lines.append(f"- distiller: `{distill['model']}` ({distill.get('backend', 'hf')})")
    return lines


def _method(facts: CardFacts) -> list[str]:
    config = facts.config
    select = config.get("select") or {}
    split = config.get("split") or {}
    lines = [
        "## What the method did",
        "",
        "lmmixup ran LM-Mixup instruction distillation on a pool of "
        "instruction/response pairs: a judge model rated every pair (0-5); pairs at or above "
        f"the high bar (split threshold {split.get('threshold', 'as configured')}) were kept as "
        "originals; the low-quality rest was grouped into clusters of similar pairs and a "
        "distiller model merged each cluster into one new pair; the merged pairs were checked, "
        "re-rated, and the training set was selected at a fixed budget "
        f"({select.get('budget', 'as configured')} rows, distilled share "
        f"{select.get('mixup_ratio', 'as configured')}).",
        "",
    ]
    models = _models(config)
    return lines + (["Models used:", "", *models, ""] if models else [])


def _counts_table(facts: CardFacts) -> list[str]:
    rows = [
        [stage, ", ".join(f"{key} {value:,}" for key, value in counts.items())]
        for stage, counts in stage_counts(facts.summary, facts.run_dir).items()
    ]
    if not rows:
        return ["## Counts per stage", "", "The run recorded no counts.", ""]
    return ["## Counts per stage", "", *markdown_table(["stage", "counts"], rows), ""]


def _sources(facts: CardFacts) -> list[str]:
    in_train = Counter(row.get("source", "(none)") for row in facts.rows)
    import_counts = RunFiles(facts.run_dir).counts("import")
    in_pool = import_counts.get("per_source") or {}
    licenses = import_counts.get("licenses") or {}
    rows = []
    for source in sorted(set(in_pool) | set(in_train), key=str):
        hub = parse_hub_id(str(source))
        where = f"[{source}](https://huggingface.co/datasets/{hub.repo})" if hub else f"`{source}`"
        license_name = licenses.get(source) or "not recorded; check the source's terms"
        pool = f"{in_pool.get(source, 0):,}" if in_pool else "not recorded"
        rows.append([where, license_name, pool, f"{in_train[source]:,}"])
    table = markdown_table(["source", "licence", "pool rows", "training rows"], rows, right_from=2)
    return ["## Sources and licences", "", *table, ""]


def _lineage(facts: CardFacts) -> list[str]:
    distilled = [row for row in facts.rows if row.get("member_ids")]
    lines = [
        "## How rows trace to the pool",
        "",
        "Every row keeps its `id`, its `source` and its `origin` (`original`: a pool pair kept "
        "as it was; `distilled`: a pair the distiller wrote). A distilled row's `member_ids` "
        "are the ids of the pool pairs (import/pool.jsonl in the run directory) its cluster "
        "merged, and `cluster_id` names the cluster (cluster/clusters.jsonl).",
        "",
    ]
    if distilled:
        example = distilled[0]
        members = ", ".join(f"`{member}`" for member in example["member_ids"])
        lines += [f"For example, `{example.get('id')}` merges {members}.", ""]
    else:
        lines += ["This training set holds no distilled row.", ""]
    return lines


def _warnings(facts: CardFacts) -> list[str]:
    if not facts.warnings:
        return ["## Warnings", "", "The run's checks raised no warning.", ""]
    lines = ["## Warnings", ""]
    for warning in facts.warnings:
        lines.append(
            f"- **{warning.get('code')}**: {warning.get('message')} "
            f"What to do: {warning.get('advice')}"
        )
    return [*lines, ""]


def _format(facts: CardFacts) -> list[str]:
    shape = (
        "`messages` (a user turn, then an assistant turn: TRL's conversational format)"
        if facts.messages
        else "`prompt` and `completion`"
    )
    return [
        "## Format",
        "",
        f"{len(facts.rows):,} rows, one split (`train`). Each row holds {shape}, plus its "
        "provenance fields. Load it with `datasets.load_from_disk(FOLDER)` or, on the Hub, "
        "`datasets.load_dataset(REPO)`.",
        "",
    ]


def dataset_card(facts: CardFacts) -> str:
    """The card's full text: `---` YAML `---`, then the Markdown body."""
    header = yaml.safe_dump(metadata(facts), sort_keys=False, allow_unicode=True)
    body = [
        "# Instruction-tuning set distilled with lmmixup",
        "",
        *_format(facts),
        *_method(facts),
        *_counts_table(facts),
        *_sources(facts),
        *_lineage(facts),
        *_warnings(facts),
        "## Config",
        "",
        "```yaml",
        facts.config_text.rstrip() or "# the run directory holds no config.yaml",
        "```",
        "",
    ]
    return f"---\n{header}---\n\n" + "\n".join(body)
