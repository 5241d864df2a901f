"""Readers that turn any supported input (files, saved datasets, Hub datasets, built-in data)
into raw rows.

Every reader yields `Line` objects (1-based position, raw text, parsed value or error), so
the importer can name the file and line of every bad row.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lmmixup.errors import LmmixupError
from lmmixup.io.assets import BUILTIN_SOURCES, builtin_path
from lmmixup.io.hf_datasets import load_hub_rows, load_local_rows, parse_hub_id
from lmmixup.io.jsonl import Line, iter_jsonl

_SURROGATES = range(0xDC80, 0xDD00)
READ_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv", ".arrow")
"""Suffixes of the data files read: a missing file with one is a missing file, not a Hub id."""


def _has_bad_bytes(value: object) -> bool:
    """True when a decoded JSON value holds bytes that were not valid UTF-8."""
    if isinstance(value, str):
        return any(ord(ch) in _SURROGATES for ch in value)
    if isinstance(value, dict):
        return any(_has_bad_bytes(k) or _has_bad_bytes(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_bad_bytes(item) for item in value)
    return False


def iter_json_array(path: str | Path) -> Iterator[Line]:
    """Yield the elements of a JSON array file one by one, with the line each starts on.

    A truncated file (cut off mid-element) still yields every complete element; the cut-off
    tail is reported as one bad line. Elements with invalid UTF-8 are reported as bad.
    """
    text = Path(path).read_bytes().decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    length = len(text)
    counted_to, line = 0, 1

    def line_of(offset: int) -> int:
        nonlocal counted_to, line
        line += text.count("\n", counted_to, offset)
        counted_to = offset
        return line

    def skip_separators(offset: int) -> int:
        while offset < length and (text[offset].isspace() or text[offset] == ","):
            offset += 1
        return offset

    while True:
        position = skip_separators(position)
        if position >= length or text[position] == "]":
            return
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            tail = text[position:]
            reason = f"truncated or invalid JSON ({exc.msg}); {len(tail):,} characters not parsed"
            yield Line(
                line_of(position),
                tail.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
                error=reason,
            )
            return
        raw = text[position:end]
        if _has_bad_bytes(value):
            yield Line(
                line_of(position),
                raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
                error="invalid UTF-8",
            )
        else:
            yield Line(line_of(position), raw, value=value)
        position = end


def iter_csv(path: str | Path) -> Iterator[Line]:
    """Yield CSV/TSV rows as dicts keyed by the header; line numbers count the header as 1."""
    delimiter = "\t" if str(path).endswith(".tsv") else ","
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        start = reader.line_num + 1
        for row in reader:
            raw = delimiter.join("" if v is None else str(v) for v in row.values())
            if None in row:
                yield Line(start, raw, error="more fields than the header has")
            elif any(v is None for v in row.values()):
                yield Line(start, raw, error="fewer fields than the header has")
            elif _has_bad_bytes(row):
                yield Line(
                    start,
                    raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
                    error="invalid UTF-8",
                )
            else:
                yield Line(
                    start,
                    raw,
                    value={
                        k: v for k, v in row.items() if v != "" or k in ("prompt", "completion")
                    },
                )
            start = reader.line_num + 1


def _iter_table_rows(rows: Iterator[dict]) -> Iterator[Line]:
    for number, row in enumerate(rows, start=1):
        clean = {k: v for k, v in row.items() if v is not None}
        yield Line(number, json.dumps(clean, ensure_ascii=False, default=str), value=clean)


def iter_parquet(path: str | Path) -> Iterator[Line]:
    """Yield Parquet rows (line = 1-based row number); nulls are treated as absent fields."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    rows = (row for batch in parquet.iter_batches(batch_size=4096) for row in batch.to_pylist())
    yield from _iter_table_rows(rows)


def iter_saved_dataset(path: str | Path, split: str | None = None) -> Iterator[Line]:
    """Yield rows of a dataset saved with `datasets.save_to_disk` (every split, or one)."""
    from datasets import DatasetDict, load_from_disk

    dataset = load_from_disk(str(path))
    if isinstance(dataset, DatasetDict):
        splits = [split] if split else list(dataset)
        for name in splits:
            yield from _iter_table_rows(iter(dataset[name]))
    else:
        yield from _iter_table_rows(iter(dataset))


def _first_char(path: Path) -> str:
    with open(path, "rb") as handle:
        head = handle.read(4096).decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    return head[:1]


def is_saved_dataset(path: Path) -> bool:
    """Whether a folder holds a dataset saved with `datasets.save_to_disk`."""
    return (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()


@dataclass
class OpenedSource:
    """A source ready to read: its display name, its rows, what it says of its licence, and
    whether the rows stream in (a Hub dataset read with `streaming`)."""

    name: str
    lines: Iterator[Line]
    license: str | None = None
    streamed: bool = False


def open_source(source: str, streaming: bool = False) -> OpenedSource:
    """Open a path, a built-in name or a Hub dataset id (`OWNER/NAME[:CONFIG]:SPLIT`); a path's
    format is taken from its suffix. `streaming`: read a Hub dataset as it downloads."""
    if source in BUILTIN_SOURCES:
        path = builtin_path(source)
        reader = iter_json_array if path.suffix == ".json" else iter_jsonl
        return OpenedSource(str(path), reader(path))
    path = Path(source)
    if not path.exists():
        hub = parse_hub_id(source) if path.suffix.lower() not in READ_SUFFIXES else None
        if hub is None:
            builtins = ", ".join(BUILTIN_SOURCES)
            raise LmmixupError(
                f"{source}: no such file or directory (built-in sources: {builtins}; "
                "Hub datasets: OWNER/NAME[:CONFIG]:SPLIT)"
            )
        loaded = load_hub_rows(hub, streaming)
        return OpenedSource(str(hub), _iter_table_rows(loaded.rows), loaded.license, streaming)
    if path.is_dir() and is_saved_dataset(path):
        return OpenedSource(str(path), iter_saved_dataset(path))
    suffix = path.suffix.lower()
    if path.is_dir() or suffix == ".arrow":
        loaded = load_local_rows(path)
        return OpenedSource(str(path), _iter_table_rows(loaded.rows), loaded.license)
    if suffix == ".parquet":
        return OpenedSource(str(path), iter_parquet(path))
    if suffix in (".csv", ".tsv"):
        return OpenedSource(str(path), iter_csv(path))
    if suffix == ".json" and _first_char(path) == "[":
        return OpenedSource(str(path), iter_json_array(path))
    return OpenedSource(str(path), iter_jsonl(path))


def iter_source(source: str) -> tuple[str, Iterator[Line]]:
    """(display name, rows) for a path, built-in name or Hub dataset id."""
    opened = open_source(source)
    return opened.name, opened.lines


def default_source_name(source: str) -> str:
    """The `source` field given to rows that have none: the built-in name, the Hub dataset's
    id (OWNER/NAME), or the file stem."""
    if source in BUILTIN_SOURCES:
        return source
    hub = parse_hub_id(source) if not Path(source).exists() else None
    if hub is not None:
        return hub.repo
    return Path(source).name.split(".")[0] or "pool"
