"""`lmmixup split`: rated records -> high-quality and low-quality files (SPEC stage 1)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from lmmixup.config import SplitConfig
from lmmixup.io import read_records, write_records


def effective_score(record: dict) -> float:
    """The score used for splitting and ranking: curated when curation ran, else the rating's.

    Finer-grained expected values (logprob judges, kNN scores) break ties inside a score.
    """
    rating = record["rating"]
    score = rating.get("curated_score", rating["score"])
    fine = rating.get("expected_overall") or rating.get("expected_score")
    return float(score) + (float(fine) / 100.0 if fine is not None else 0.0)


def split_records(
    records: list[dict], cfg: SplitConfig
) -> tuple[list[dict], list[dict], list[dict]]:
    """(high, low, unrated): by score >= threshold, or the top `high_fraction` by score."""
    rated = [r for r in records if r.get("rating") is not None]
    unrated = [r for r in records if r.get("rating") is None]
    if cfg.high_fraction is None:
        high = [
            r
            for r in rated
            if r["rating"].get("curated_score", r["rating"]["score"]) >= cfg.threshold
        ]
    else:
        ranked = sorted(rated, key=lambda r: (-effective_score(r), r["id"]))
        high = ranked[: round(len(ranked) * cfg.high_fraction)]
    high_ids = {r["id"] for r in high}
    return (
        [r for r in rated if r["id"] in high_ids],
        [r for r in rated if r["id"] not in high_ids],
        unrated,
    )


def split_file(rated: Path, high: Path, low: Path, cfg: SplitConfig) -> dict:
    """Write the high and low files (and unrated failures beside them); counts per source."""
    high_records, low_records, unrated = split_records(read_records(rated), cfg)
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
        unrated_path = low.with_name("unrated.jsonl")
        write_records(unrated_path, unrated)
        counts["unrated_file"] = str(unrated_path)
    return counts
