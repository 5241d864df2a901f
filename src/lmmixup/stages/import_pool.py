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
from lmmixup.io.formats import RecordOutput, beside
from lmmixup.io.jsonl import reject_record, write_records
from lmmixup.io.sources import default_source_name, open_source
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
    filtered_by_match: int = 0
    repeated: int = 0
    dropped_by_limit: int = 0
    per_source: Counter = field(default_factory=Counter)
    reject_reasons: Counter = field(default_factory=Counter)
    licenses: dict[str, str] = field(default_factory=dict)
    stopped_at_limit: list[str] = field(default_factory=list)

    def counts(self) -> dict:
        return {
            "kept": self.kept,
            "held_out": self.held_out,
            "reserved_for_eval": self.reserved_for_eval,
            "rejected": self.rejected,
            "filtered_by_length": self.filtered,
            "filtered_by_match": self.filtered_by_match,
            "repeated_across_sources": self.repeated,
            "dropped_by_limit": self.dropped_by_limit,
            "per_source": dict(self.per_source),
            "reject_reasons": dict(self.reject_reasons),
            "licenses": dict(self.licenses),
            "stopped_at_limit": list(self.stopped_at_limit),
        }


def reserved_lines(source: str) -> frozenset[int]:
    """1-based lines of a built-in source that the offline evaluation suite uses: importing
    them would put test questions into training sets, so the importer skips them."""
    if source != "gsm8k":
        return frozenset()
    return frozenset(row + 1 for row in gsm8k_reserved_rows())


def length_ok(record: dict, cfg: ImportConfig) -> bool:
    prompt, completion = len(record["prompt"]), len(record["completion"])
    return cfg.min_prompt_chars <= prompt <= (
        cfg.max_prompt_chars or prompt
    ) and cfg.min_completion_chars <= completion <= (cfg.max_completion_chars or completion)


def _short_reason(reason: str) -> str:
    """The reason without row-specific details (indexes, values), for counting reasons."""
    reason = re.sub(r"\[\d+\]", "[i]", reason)
    reason = re.sub(r"'[^']*'|\"[^\"]*\"|\d[\d,.]*", "…", reason.split(" (first seen")[0])
    return reason[:90]


def _stop_at(sources: list[SourceSpec], cfg: ImportConfig) -> int | None:
    """How many kept rows end a streamed source early: the limit, when no sample is drawn
    (a sample needs every row)."""
    sampled = cfg.sample is not None or any(s.sample is not None for s in sources)
    return None if sampled else cfg.limit


def import_pool(
    sources: list[SourceSpec | str],
    output: str | Path | RecordOutput,
    cfg: ImportConfig,
    rejects: str | Path | None = None,
) -> ImportResult:
    """Read every source, keep valid unique rows, write the pool and the rejects atomically.

    Hub datasets stream when `cfg.streaming` or a `limit` is set; with a limit and no sample,
    a streamed source is read only until the limit is reached."""
    sources = [SourceSpec.model_validate(source) for source in sources]
    out = output if isinstance(output, RecordOutput) else RecordOutput(Path(output))
    rejects_path = Path(rejects) if rejects else beside(out.path, "rejects")
    result = ImportResult(out.path, rejects_path)
    kept: list[dict] = []
    bad: list[dict] = []
    kept_from: dict[str, str] = {}  # id -> where the kept row was read
    stop_at = _stop_at(sources, cfg)
    for source in sources:
        opened = open_source(source.path, streaming=cfg.streaming or cfg.limit is not None)
        name, lines = opened.name, opened.lines
        if opened.license:
            result.licenses[name] = opened.license
        default_source = default_source_name(source.path)
        reserved = reserved_lines(source.path)
        match = re.compile(source.match) if source.match else None
        seen: dict[str, str] = {}
        from_source: list[dict] = []
        with progress(f"import {Path(name).name}", total=None) as advance:
            for line in lines:
                if (
                    opened.streamed
                    and stop_at is not None
                    and len(kept) + len(from_source) >= stop_at
                ):
                    result.stopped_at_limit.append(name)
                    break
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
                if not length_ok(record, cfg):
                    result.filtered += 1
                    continue
                if match is not None and not match.search(record["prompt"]):
                    result.filtered_by_match += 1
                    continue
                from_source.append(record)
        for record in _sample(from_source, source.sample, cfg.seed, result):
            first = kept_from.get(record["id"])
            if first is None:
                kept_from[record["id"]] = seen[record["id"]]
                kept.append(record)
            elif first.startswith(f"{name}:"):
                result.repeated += 1  # the same row, listed again (e.g. a sample and a match)
            else:
                reason = f"duplicate id {record['id']!r} (first seen at {first})"
                line = int(seen[record["id"]].rsplit(":", 1)[1])
                bad.append(reject_record(name, line, reason, record))
                result.reject_reasons[_short_reason(reason)] += 1
    kept = _sample(kept, cfg.sample, cfg.seed, result)
    if cfg.limit is not None:
        result.dropped_by_limit += max(0, len(kept) - cfg.limit)
        kept = kept[: cfg.limit]
    kept, heldout = _hold_out(kept, cfg)
    if cfg.holdout_fraction:
        result.heldout = heldout_path(out)
        result.held_out = RecordOutput(result.heldout, out.fmt).write(heldout)
    result.kept = out.write(kept)
    result.rejected = write_records(rejects_path, bad)
    result.per_source = Counter(record["source"] for record in kept)
    return result


def heldout_path(pool: Path | RecordOutput) -> Path:
    """Where the held-out rows of an import into `pool` go, in the pool's format."""
    out = pool if isinstance(pool, RecordOutput) else RecordOutput(Path(pool))
    return out.companion("heldout")


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
