"""Writing user-facing record outputs as JSONL, Parquet or a saved Hugging Face dataset.

The format comes from the output's name (`.jsonl`, `.parquet`, anything else is a folder
holding a dataset saved with `datasets.save_to_disk`) or from `--format`; a name that says one
format and a `--format` that says another is an error, never a silent choice. Rows can be
written as prompt/completion or as TRL's conversational `messages` (user, then assistant);
every other field (id, source, origin, member_ids, ...) is kept beside them.

Stage outputs inside a run directory stay JSONL: resuming appends to them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lmmixup.errors import LmmixupError
from lmmixup.io.jsonl import write_records, writing

FORMATS = ("jsonl", "parquet", "hf")
SUFFIXES = {".jsonl": "jsonl", ".parquet": "parquet"}
NOT_WRITTEN = (".json", ".csv", ".tsv", ".arrow", ".txt", ".gz", ".zip", ".yaml", ".yml")
"""Suffixes of files lmmixup reads but does not write: such a name is refused, not made a folder."""
PAIR_FIELDS = ("prompt", "completion")


def stem(path: str | Path) -> str:
    """The output's name without its format suffix: `train.parquet` -> `train`."""
    name = Path(path).name
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def beside(path: str | Path, part: str, suffix: str = ".jsonl") -> Path:
    """A companion file of an output: `beside(train.parquet, "why")` -> `train.why.jsonl`."""
    path = Path(path)
    return path.with_name(f"{stem(path)}.{part}{suffix}")


def output_format(path: str | Path, fmt: str | None = None) -> str:
    """The format an output is written in: from `--format`, else its suffix, else `hf`.

    Refuses a `--format` the name disagrees with and names of files lmmixup does not write."""
    path = Path(path)
    if fmt is not None and fmt not in FORMATS:
        raise LmmixupError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    suffix = path.suffix.lower()
    if suffix in NOT_WRITTEN:
        raise LmmixupError(
            f"{path}: records are written as .jsonl, .parquet, or a folder holding a saved "
            f"Hugging Face dataset, not {suffix}; rename the output"
        )
    by_name = SUFFIXES.get(suffix, "hf")
    if fmt is not None and fmt != by_name:
        wanted = (
            "a folder name (no .jsonl or .parquet)" if fmt == "hf" else f"a name ending in .{fmt}"
        )
        raise LmmixupError(
            f"{path}: the name says {by_name} but --format says {fmt}; give the output "
            f"{wanted}, or leave --format out"
        )
    return by_name


def as_messages(row: dict) -> dict:
    """A prompt/completion row in TRL's conversational format; the other fields are kept."""
    rest = {key: value for key, value in row.items() if key not in PAIR_FIELDS}
    messages = [
        {"role": "user", "content": row["prompt"]},
        {"role": "assistant", "content": row["completion"]},
    ]
    return {"messages": messages, **rest}


def arrow_table(rows: list[dict]):
    """A pyarrow table holding every field any row has (absent fields are null)."""
    import pyarrow as pa

    names = list(dict.fromkeys(key for row in rows for key in row))
    columns = {}
    for name in names:
        try:
            columns[name] = pa.array([row.get(name) for row in rows])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise LmmixupError(
                f"field {name!r} holds values of different types in different rows ({exc}); "
                "write JSONL (-o NAME.jsonl) instead"
            ) from exc
    return pa.table(columns) if names else pa.table({})


def _replace_folder(tmp: Path, path: Path) -> None:
    """Move a finished folder into place; an older saved dataset there is replaced."""
    if path.exists():
        if not is_replaceable(path):
            raise LmmixupError(
                f"{path} is a folder holding other files; choose a new folder for the dataset"
            )
        shutil.rmtree(path)
    os.replace(tmp, path)


def is_replaceable(path: Path) -> bool:
    """Whether a folder is empty or holds a saved dataset lmmixup may overwrite."""
    names = {p.name for p in path.iterdir()}
    return not names or "dataset_info.json" in names or "dataset_dict.json" in names


def check_folder_output(path: str | Path) -> None:
    """Refuse, before any work, a dataset folder that would overwrite unrelated files."""
    path = Path(path)
    if path.is_file() or (path.is_dir() and not is_replaceable(path)):
        raise LmmixupError(
            f"{path} exists and is not a saved dataset; choose a new folder for the dataset"
        )


def write_parquet(path: Path, rows: list[dict]) -> None:
    """Write rows as one Parquet file, atomically (temp file + rename)."""
    import pyarrow.parquet as pq

    table = arrow_table(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with writing(path):
            pq.write_table(table, tmp)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_dataset(path: Path, rows: list[dict], extra_files: dict[str, str] | None = None) -> None:
    """Save rows as a Hugging Face dataset folder (`datasets.load_from_disk(path)`), plus any
    `extra_files` (name -> text, e.g. a README.md card), replacing the folder in one step."""
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()  # lmmixup prints its own one-line summary
    dataset = Dataset(arrow_table(rows))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with writing(path):
            dataset.save_to_disk(str(tmp))
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text, encoding="utf-8")
            _replace_folder(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class RecordOutput:
    """Where and how a command writes its records: path, format, row shape."""

    path: Path
    fmt: str = "jsonl"
    messages: bool = False

    @classmethod
    def of(cls, path: str | Path, fmt: str | None = None, messages: bool = False) -> RecordOutput:
        """The output for a user's `-o PATH [--format F] [--messages]`, checked before any work."""
        resolved = output_format(path, fmt)
        if resolved == "hf":
            check_folder_output(path)
        return cls(Path(path), resolved, messages)

    def write(self, rows: Iterable[dict], extra_files: dict[str, str] | None = None) -> int:
        """Write the rows (as `messages` when asked); returns how many were written."""
        rows = [as_messages(row) if self.messages else row for row in rows]
        if self.fmt == "jsonl":
            return write_records(self.path, rows)
        if self.fmt == "parquet":
            write_parquet(self.path, rows)
        else:
            save_dataset(self.path, rows, extra_files)
        return len(rows)

    def companion(self, part: str) -> Path:
        """A file written beside the output in its format: `pool.heldout.parquet`, or a folder."""
        suffix = {"jsonl": ".jsonl", "parquet": ".parquet", "hf": ""}[self.fmt]
        return beside(self.path, part, suffix)
