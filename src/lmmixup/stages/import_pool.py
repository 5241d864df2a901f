"""`lmmixup data import`: any supported input -> validated pool records + a rejects file.

`IMPORT` declares it as the first stage of `lmmixup run`.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lmmixup.config import ImportConfig, RunConfig, SourceSpec
from lmmixup.errors import LmmixupError
from lmmixup.evalsuite import gsm8k_reserved_rows
from lmmixup.io.assets import BUILTIN_SOURCES, builtin_path
from lmmixup.io.jsonl import reject_record, write_records
from lmmixup.io.sources import default_source_name, iter_source
from lmmixup.progress import progress
from lmmixup.records import BadRow, normalise_row
from lmmixup.runtime.runner import StageDir
from lmmixup.runtime.spec import StageSpec


@dataclass
class ImportResult:
    """What an import kept, rejected and filtered out, and where it wrote them."""

    output: Path
    rejects: Path
    heldout: Path | None = None
    kept: int = 0
    held_out: int = 0
    reserved_for_eval: int = 0
    rejected: int = 0
    filtered: int = 0
    dropped_by_limit: int = 0
    per_source: Counter = field(default_factory=Counter)
    reject_reasons: Counter = field(default_factory=Counter)

    def counts(self) -> dict:
        return {
            "kept": self.kept,
            "held_out": self.held_out,
            "reserved_for_eval": self.reserved_for_eval,
            "rejected": self.rejected,
            "filtered_by_length": self.filtered,
            "dropped_by_limit": self.dropped_by_limit,
            "per_source": dict(self.per_source),
            "reject_reasons": dict(self.reject_reasons),
        }


def reserved_lines(source: str) -> frozenset[int]:
    """1-based lines of a built-in source that the offline evaluation suite uses: importing
    them would put test questions into training sets, so the importer skips them."""
    if source != "gsm8k":
        return frozenset()
    return frozenset(row + 1 for row in gsm8k_reserved_rows())


def _length_ok(record: dict, cfg: ImportConfig) -> bool:
    prompt, completion = len(record["prompt"]), len(record["completion"])
    return cfg.min_prompt_chars <= prompt <= (
        cfg.max_prompt_chars or prompt
    ) and cfg.min_completion_chars <= completion <= (cfg.max_completion_chars or completion)


def _short_reason(reason: str) -> str:
    """The reason without row-specific details (indexes, values), for counting reasons."""
    reason = re.sub(r"\[\d+\]", "[i]", reason)
    reason = re.sub(r"'[^']*'|\"[^\"]*\"|\d[\d,.]*", "…", reason.split(" (first seen")[0])
    return reason[:90]


def import_pool(
    sources: list[SourceSpec | str],
    output: str | Path,
    cfg: ImportConfig,
    rejects: str | Path | None = None,
) -> ImportResult:
    """Read every source, keep valid unique rows, write the pool and the rejects atomically."""
    sources = [SourceSpec.model_validate(source) for source in sources]
    output = Path(output)
    rejects_path = (
        Path(rejects)
        if rejects
        else output.with_name(output.name.removesuffix(".jsonl") + ".rejects.jsonl")
    )
    result = ImportResult(output, rejects_path)
    kept: list[dict] = []
    bad: list[dict] = []
    seen: dict[str, str] = {}
    for source in sources:
        name, lines = iter_source(source.path)
        default_source = default_source_name(source.path)
        reserved = reserved_lines(source.path)
        from_source: list[dict] = []
        with progress(f"import {Path(name).name}", total=None) as advance:
            for line in lines:
                advance()
                if line.number in reserved:
                    result.reserved_for_eval += 1
                    continue
                try:
                    if line.error is not None:
                        raise BadRow(line.error)
                    record = normalise_row(
                        line.value, default_source=default_source, max_chars=cfg.reject_over_chars
                    )
                    if record["id"] in seen:
                        raise BadRow(
                            f"duplicate id {record['id']!r} (first seen at {seen[record['id']]})"
                        )
                except BadRow as exc:
                    bad.append(reject_record(name, line.number, str(exc), line.raw))
                    result.reject_reasons[_short_reason(str(exc))] += 1
                    continue
                seen[record["id"]] = f"{name}:{line.number}"
                if not _length_ok(record, cfg):
                    result.filtered += 1
                    continue
                from_source.append(record)
        kept.extend(_sample(from_source, source.sample, cfg.seed, result))
    kept = _sample(kept, cfg.sample, cfg.seed, result)
    if cfg.limit is not None:
        result.dropped_by_limit += max(0, len(kept) - cfg.limit)
        kept = kept[: cfg.limit]
    kept, heldout = _hold_out(kept, cfg)
    if cfg.holdout_fraction:
        result.heldout = heldout_path(output)
        result.held_out = write_records(result.heldout, heldout)
    result.kept = write_records(output, kept)
    result.rejected = write_records(rejects_path, bad)
    result.per_source = Counter(record["source"] for record in kept)
    return result


def heldout_path(pool: Path) -> Path:
    """Where the held-out rows of an import into `pool` go."""
    return pool.with_name(pool.name.removesuffix(".jsonl") + ".heldout.jsonl")


def _hold_out(records: list[dict], cfg: ImportConfig) -> tuple[list[dict], list[dict]]:
    """(rows kept for the pool, seeded held-out rows), both in their original order."""
    size = round(len(records) * cfg.holdout_fraction)
    if cfg.holdout_max is not None:
        size = min(size, cfg.holdout_max)
    held = set(random.Random(f"holdout-{cfg.seed}").sample(range(len(records)), size))
    return (
        [r for i, r in enumerate(records) if i not in held],
        [r for i, r in enumerate(records) if i in held],
    )


def _sample(records: list[dict], size: int | None, seed: int, result: ImportResult) -> list[dict]:
    """A seeded random subset of `size` rows in their original order (all rows if fewer)."""
    if size is None or size >= len(records):
        return records
    chosen = sorted(random.Random(seed).sample(range(len(records)), size))
    result.dropped_by_limit += len(records) - size
    return [records[i] for i in chosen]


def source_files(cfg: RunConfig) -> list[Path]:
    """The files (or saved datasets) the run's import reads, built-in sources resolved."""
    return [
        builtin_path(s.path) if s.path in BUILTIN_SOURCES else Path(s.path)
        for s in cfg.import_.sources
    ]


def _run_import(stage: StageDir, cfg: RunConfig, _: dict[str, Path]) -> None:
    result = import_pool(
        cfg.import_.sources, stage.file("pool.jsonl"), cfg.import_, stage.file("rejects.jsonl")
    )
    stage.counts.update(result.counts())
    if not result.kept:
        raise LmmixupError(
            f"import kept no rows ({result.rejected:,} rejected -> {result.rejects}, "
            f"{result.filtered:,} outside the length limits); fix the sources or the "
            "import limits, then re-run"
        )
    if result.heldout is None:  # the file is there whenever the stage is done
        stage.file("pool.heldout.jsonl").write_text("")


IMPORT = StageSpec(
    "import",
    sections=("import_",),
    reads={},
    outputs={"pool": "pool.jsonl", "heldout": "pool.heldout.jsonl", "rejects": "rejects.jsonl"},
    run=_run_import,
    sources=source_files,
)
