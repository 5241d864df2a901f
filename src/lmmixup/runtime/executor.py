"""Per-record stages and the executors that run them.

A per-record stage (`RecordStage`) turns a batch of records into one result per record. It
is built from picklable settings only and opens what it needs (model, client, call cache,
member index) in `open()`, in whichever process runs it. The executor, not the stage, owns
batching, resume, rejects, durable writing and progress; `LocalExecutor` runs a stage in
this process (`process_records` is its loop).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lmmixup.io.jsonl import AppendWriter, compact_done, read_records, reject_record
from lmmixup.progress import progress

BatchFn = Callable[[list[dict]], list[dict]]
REJECT_KEY = "_reject"
"""A result carrying this key is a reject; its value is the reason."""


class RecordStage(Protocol):
    """A per-record stage: settings in `__init__`, resources in `open()`, work in `process`.

    - `__init__` takes only picklable settings (configs, paths, numbers): a stage can be
      pickled before `open()` and rebuilt in another process.
    - `open()` loads the model or client, opens the call cache, reads the member index.
    - `process(batch)` returns one result per record, in order: an output record, or a
      reject marked with `REJECT_KEY` (its reason). The stage never writes files.
    - `close()` releases what `open()` opened and returns what the stage counted while open
      (model usage, cache hits, why it stopped), {} by default.
    - resume policy: `is_done(record)` says whether an output line already written stands
      (default: yes), `retry(reject)` whether a reject is done again on the next run
      (default: no), `should_stop()` is asked after each batch (default: never).

    Subclass it explicitly to inherit the defaults. `batch_size` is the records per
    `process` call; `description` names the progress bar.

    Ray Data's `map_batches` can run a stage later without changes to it: a small callable
    class, constructed in each worker from the pickled stage, calls `open()` in its
    `__init__` and, in `__call__`, turns Ray's column batch into rows, calls `process` and
    turns the results back into columns; resume and writing stay with that executor.
    """

    batch_size: int
    description: str

    def open(self) -> None: ...

    def process(self, batch: list[dict]) -> list[dict]: ...

    def close(self) -> dict[str, Any]:
        return {}

    def is_done(self, record: dict) -> bool:
        return True

    def retry(self, reject: dict) -> bool:
        return False

    def should_stop(self) -> bool:
        return False


@dataclass
class StageRun:
    """What running a per-record stage gave: the executor's counts and the stage's report."""

    counts: dict[str, int]
    report: dict[str, Any] = field(default_factory=dict)


class Executor(Protocol):
    """Runs a per-record stage over numbered records into an output and a rejects file."""

    def run(
        self,
        stage: RecordStage,
        records: Iterable[tuple[int, dict]],
        *,
        output: Path,
        rejects: Path,
        source: str,
        total: int | None = None,
    ) -> StageRun: ...


class LocalExecutor:
    """Runs a stage in this process: open, `process_records` with its policy, close."""

    def run(
        self,
        stage: RecordStage,
        records: Iterable[tuple[int, dict]],
        *,
        output: Path,
        rejects: Path,
        source: str,
        total: int | None = None,
    ) -> StageRun:
        stage.open()
        try:
            counts = process_records(
                records,
                stage.process,
                output=output,
                rejects=rejects,
                source=source,
                batch_size=stage.batch_size,
                is_done=stage.is_done,
                retry=stage.retry,
                total=total,
                description=stage.description,
                should_stop=stage.should_stop,
            )
        finally:
            report = stage.close()
        return StageRun(counts, report)


def _done_ids(
    output: Path,
    rejects: Path,
    is_done: Callable[[dict], bool],
    key: str,
    retry: Callable[[dict], bool],
) -> set:
    done = set(compact_done(output, is_done, key))
    done |= set(compact_done(rejects, lambda record: not retry(record), key))
    return done


def process_records(
    records: Iterable[tuple[int, dict]],
    fn: BatchFn,
    *,
    output: Path,
    rejects: Path,
    source: str,
    batch_size: int = 16,
    is_done: Callable[[dict], bool] = lambda record: True,
    retry: Callable[[dict], bool] = lambda reject: False,
    key: str = "id",
    total: int | None = None,
    description: str = "records",
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, int]:
    """Apply a batch function to (line, record) pairs, appending results durably.

    Records whose key already has a finished output (or a reject) are skipped, so a re-run
    after a crash continues where it stopped. Each batch is flushed to disk before the next
    starts: a kill loses at most the batch in flight. Outputs carrying `REJECT_KEY` go to
    the rejects file with the input's file and line; a reject for which `retry` is true (e.g.
    a failed model call) is removed on the next run and its record done again. `should_stop`
    is asked after each batch (e.g. a request budget ran out): the loop then ends with
    `stopped_early` counted.
    """
    done = _done_ids(output, rejects, is_done, key, retry)
    counts = {"already_done": 0, "written": 0, "rejected": 0, "stopped_early": 0}
    with (
        AppendWriter(output) as out,
        AppendWriter(rejects) as bad,
        progress(description, total) as advance,
    ):
        batch: list[tuple[int, dict]] = []

        def flush() -> None:
            results = fn([record for _, record in batch])
            lines = {record[key]: number for number, record in batch}
            good = [r for r in results if REJECT_KEY not in r]
            failed = [_as_reject(r, source, lines) for r in results if REJECT_KEY in r]
            bad.write_many(failed)
            out.write_many(good)
            counts["written"] += len(good)
            counts["rejected"] += len(failed)
            advance(len(batch))
            batch.clear()

        for number, record in records:
            if record[key] in done:
                counts["already_done"] += 1
                advance()
                continue
            batch.append((number, record))
            if len(batch) >= batch_size:
                flush()
                if should_stop():
                    counts["stopped_early"] = 1
                    return counts
        if batch:
            flush()
    return counts


def _as_reject(record: dict, source: str, lines: dict) -> dict:
    reason = record[REJECT_KEY]
    clean = {k: v for k, v in record.items() if k != REJECT_KEY}
    return {
        "id": record.get("id"),
        **reject_record(source, lines.get(record.get("id"), 0), reason, clean),
    }


def numbered(path: Path) -> Iterable[tuple[int, dict]]:
    """(line number, record) pairs of a JSONL file written by lmmixup."""
    return enumerate(read_records(path), start=1)
