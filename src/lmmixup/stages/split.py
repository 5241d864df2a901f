"""`lmmixup split`: rated records -> high-quality and low-quality files (SPEC stage 1).

`SPLIT` declares it as a stage of `lmmixup run`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from lmmixup.config import RunConfig, SplitConfig
from lmmixup.io.jsonl import write_records
from lmmixup.io.validate import RATED_RECORD, read_checked
from lmmixup.records import effective_score
from lmmixup.runtime.runner import StageDir
from lmmixup.runtime.spec import StageSpec


def ranking_score(record: dict) -> float:
    """The score a top-fraction split ranks by: the effective (curated) score, with the
    finer-grained expected values (logprob judges, kNN scores) breaking ties inside a score."""
    rating = record["rating"]
    fine = rating.get("expected_overall") or rating.get("expected_score")
    return float(effective_score(rating)) + (float(fine) / 100.0 if fine is not None else 0.0)


def split_records(
    records: list[dict], cfg: SplitConfig
) -> tuple[list[dict], list[dict], list[dict]]:
    """(high, low, unrated): by effective score >= threshold, or the top `high_fraction`."""
    rated = [r for r in records if r.get("rating") is not None]
    unrated = [r for r in records if r.get("rating") is None]
    if cfg.high_fraction is None:
        high = [r for r in rated if effective_score(r["rating"]) >= cfg.threshold]
    else:
        ranked = sorted(rated, key=lambda r: (-ranking_score(r), r["id"]))
        high = ranked[: round(len(ranked) * cfg.high_fraction)]
    high_ids = {r["id"] for r in high}
    return (
        [r for r in rated if r["id"] in high_ids],
        [r for r in rated if r["id"] not in high_ids],
        unrated,
    )


def unrated_path(low: Path) -> Path:
    """Where a split puts the records without a rating: LOW.unrated.jsonl beside the low file,
    so two splits into one folder never share (and clobber) one unrated file."""
    return low.with_name(low.name.removesuffix(".jsonl") + ".unrated.jsonl")


def split_file(
    rated: Path, high: Path, low: Path, cfg: SplitConfig, unrated_file: Path | None = None
) -> dict:
    """Write the high and low files, and the records without a rating (failures) to
    `unrated_file` (default: `unrated_path(low)`; a stale one from an earlier split is removed
    when there are none); counts per source.

    The rated file is checked first: a bad record, or a file where no record has a rating,
    is an error naming the file."""
    unrated_file = unrated_file or unrated_path(low)
    high_records, low_records, unrated = split_records(read_checked(rated, RATED_RECORD), cfg)
    write_records(high, high_records)
    write_records(low, low_records)
    high_counts = Counter(r["source"] for r in high_records)
    low_counts = Counter(r["source"] for r in low_records)
    counts = {
        "high": len(high_records),
        "low": len(low_records),
        "unrated": len(unrated),
        "rule": f"top {cfg.high_fraction:.0%}"
        if cfg.high_fraction
        else f"score >= {cfg.threshold}",
        "per_source": {
            source: {"high": high_counts[source], "low": low_counts[source]}
            for source in sorted(high_counts | low_counts)
        },
    }
    if unrated:
        write_records(unrated_file, unrated)
        counts["unrated_file"] = str(unrated_file)
    else:
        unrated_file.unlink(missing_ok=True)
    return counts


def _run_split(stage: StageDir, cfg: RunConfig, inputs: dict[str, Path]) -> None:
    stage.counts.update(
        split_file(
            inputs["rated"],
            stage.file("high.jsonl"),
            stage.file("low.jsonl"),
            cfg.split,
            unrated_file=stage.file("unrated.jsonl"),
        )
    )


SPLIT = StageSpec(
    "split",
    sections=("split",),
    reads={"rated": "rate.rated"},
    outputs={"high": "high.jsonl", "low": "low.jsonl"},
    run=_run_split,
)
