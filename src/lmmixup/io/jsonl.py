"""Reading and writing JSONL record files, with line numbers, rejects and crash-safe appends."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from lmmixup.errors import LmmixupError


@dataclass(frozen=True)
class Line:
    """One physical line of a JSONL file: its 1-based number, the parsed object or the error."""

    number: int
    raw: str
    value: Any = None
    error: str | None = None


def iter_jsonl(path: str | Path) -> Iterator[Line]:
    """Yield every non-blank line of a JSONL file, parsed, or with the reason it could not be.

    Lines are decoded one by one, so a line with invalid UTF-8 is reported on its own and
    the rest of the file is still read.
    """
    with open(path, "rb") as handle:
        for number, data in enumerate(handle, start=1):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raw = data.decode("utf-8", errors="replace").rstrip("\r\n")
                yield Line(number, raw, error=f"invalid UTF-8 at byte {exc.start}")
                continue
            text = text.rstrip("\r\n")
            if number == 1:
                text = text.removeprefix("\ufeff")
            if not text.strip():
                continue
            try:
                yield Line(number, text, value=json.loads(text))
            except json.JSONDecodeError as exc:
                yield Line(number, text, error=f"invalid JSON: {exc.msg} at column {exc.colno}")


def read_records(path: str | Path) -> list[dict]:
    """Read a JSONL file written by lmmixup; any bad line is an error naming file and line."""
    records = []
    for line in iter_jsonl(path):
        if line.error is not None or not isinstance(line.value, dict):
            reason = line.error or "not a JSON object"
            raise LmmixupError(f"{path}:{line.number}: {reason}")
        records.append(line.value)
    return records


def dumps(record: dict) -> str:
    """One JSONL line (without the newline); non-ASCII kept as is."""
    return json.dumps(record, ensure_ascii=False)


def write_error(path: str | Path, exc: OSError) -> LmmixupError:
    """A failed write as one line naming the file and what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return LmmixupError(f"no space left on device writing {path}; free space and re-run")
    return LmmixupError(f"cannot write {path}: {exc.strerror or exc}")


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn an OS error raised while writing `path` into an error that names it."""
    try:
        yield
    except OSError as exc:
        raise write_error(path, exc) from exc


@contextmanager
def replacing(path: Path) -> Iterator[TextIO]:
    """An open temp file beside `path` that replaces it when the block ends, or is removed
    when the block fails (a disk full, an interrupt): no hidden `.NAME.tmp-PID` is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with writing(path):
            handle = open(tmp, "w", encoding="utf-8")  # noqa: SIM115
        try:
            yield handle
            with writing(path):
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()
                os.replace(tmp, path)
        finally:
            if not handle.closed:  # the block failed: its error is the one to report
                with suppress(OSError):
                    handle.close()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace a file's content in one step (temp file + rename): readers never see half of it."""
    with replacing(Path(path)) as handle, writing(path):
        handle.write(text)


def write_records(path: str | Path, records: Iterable[dict]) -> int:
    """Write records atomically (temp file + rename); returns how many were written."""
    count = 0
    with replacing(Path(path)) as handle:
        for record in records:
            line = dumps(record) + "\n"
            try:
                handle.write(line)
            except OSError as exc:
                raise write_error(path, exc) from exc
            count += 1
    return count


class AppendWriter:
    """Appends records to a JSONL file; `flush()` makes everything written so far durable."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with writing(self.path):
            self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self.count = 0

    def write(self, record: dict) -> None:
        with writing(self.path):
            self._handle.write(dumps(record) + "\n")
        self.count += 1

    def write_many(self, records: Iterable[dict]) -> None:
        for record in records:
            self.write(record)
        self.flush()

    def flush(self) -> None:
        with writing(self.path):
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        if not self._handle.closed:
            self.flush()
            self._handle.close()

    def __enter__(self) -> AppendWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def reject_record(file: str | Path, line: int, reason: str, raw: Any) -> dict:
    """The reject format of DESIGN.md: where it came from, why, and the input as given."""
    return {"file": str(file), "line": line, "reason": reason, "raw": raw}


def repair_tail(path: str | Path) -> None:
    """Cut a partial last line (a write interrupted by a crash) off an append-only file."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        position = size
        block = 1 << 16
        while position > 0:
            start = max(0, position - block)
            handle.seek(start)
            chunk = handle.read(position - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                handle.truncate(start + newline + 1)
                return
            position = start
        handle.truncate(0)


def compact_done(
    path: str | Path, is_done: Callable[[dict], bool], key: str = "id"
) -> dict[str, dict]:
    """Prepare an interrupted output file for resuming.

    Cuts a torn last line, then keeps only the first finished record per key (`is_done`);
    records that are not finished (e.g. failed ratings, to be retried) are removed. The file
    is rewritten atomically only when something was removed. Returns the kept records by key.
    """
    path = Path(path)
    if not path.exists():
        return {}
    repair_tail(path)
    kept: dict[str, dict] = {}
    dropped = 0
    for record in read_records(path):
        record_key = record.get(key)
        if record_key in kept or not is_done(record):
            dropped += 1
            continue
        kept[record_key] = record
    if dropped:
        write_records(path, kept.values())
    return kept


def sort_records(path: str | Path, rank: Callable[[dict], Any]) -> None:
    """Put a record file's lines in `rank` order (stable); rewritten atomically, and only
    when they are not in that order already."""
    path = Path(path)
    if not path.exists():
        return
    records = read_records(path)
    ranks = [rank(record) for record in records]
    if any(later < earlier for earlier, later in zip(ranks, ranks[1:], strict=False)):
        order = sorted(range(len(records)), key=ranks.__getitem__)
        write_records(path, (records[i] for i in order))
