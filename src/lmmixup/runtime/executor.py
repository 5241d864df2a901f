"""Per-record stages and the executors that run them.

A per-record stage (`RecordStage`) turns a batch of records into one result per record. It
is built from picklable settings only and opens what it needs (model, client, call cache,
member index) in `open()`, in whichever process runs it. The executor, not the stage, owns
batching, resume, rejects, durable writing and progress; `LocalExecutor` runs a stage in
this process (`process_records` is its loop).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lmmixup.config import BackendConfig
from lmmixup.io.jsonl import (
    AppendWriter,
    compact_done,
    read_records,
    reject_record,
    sort_records,
)
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
    `process` call; `description` names the progress bar. `concurrency` is how many
    `process` calls may run at once (default 1): a stage that waits on a server sets it
    above 1 (see `stage_sizing`), its `process` is then called from worker threads and must
    be thread-safe, and its results are written in the order they finish.

    The Ray executor (`runtime.ray_executor`) runs a stage unchanged: each worker opens its
    own copy of the pickled stage and calls `process`; resume and writing stay on the driver.
    """

    batch_size: int
    description: str
    concurrency: int = 1

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
                concurrency=stage.concurrency,
            )
        finally:
            report = stage.close()
        return StageRun(counts, report)


RECORDS_PER_REQUEST_SLOT = 2
"""A server stage keeps this many records in process per request it may have in flight:
while some records are checked (parsed, embedded), the others keep every slot busy."""
BATCHES_PER_LOCAL_CALL = 4
"""An hf model gets this many `batch_size` batches of records per call: it decodes
`batch_size` rows at once and gives the slot of a row that ends to the next record, so a
call of one batch would leave slots empty."""


def stage_sizing(backend: BackendConfig) -> tuple[int, int]:
    """(batch_size, concurrency) of a stage whose model `backend` configures. A server
    (openai): one record per `process` call, each written as soon as it is done, and
    RECORDS_PER_REQUEST_SLOT x `backend.concurrency` calls at once; the model itself holds at
    most `backend.concurrency` requests in flight, and a reply goes into the call cache
    before its record is checked, so a kill re-pays at most the records in process (those in
    flight, and those whose reply came back a moment before the kill and was not cached). A
    local model, one call at a time: hf `BATCHES_PER_LOCAL_CALL` x `batch_size` records per
    call, vllm `batch_size`."""
    if backend.backend == "openai":
        return 1, RECORDS_PER_REQUEST_SLOT * backend.concurrency
    if backend.backend == "hf":
        return BATCHES_PER_LOCAL_CALL * backend.batch_size, 1
    return backend.batch_size, 1


def done_ids(
    output: Path,
    rejects: Path,
    is_done: Callable[[dict], bool] = lambda record: True,
    key: str = "id",
    retry: Callable[[dict], bool] = lambda reject: False,
) -> set:
    """The keys a (re-)run skips: records with an output line that `is_done` accepts, or a
    reject that `retry` does not send back. Compacts both files first (`compact_done`): lines
    to be done again are dropped, so each key ends with one line."""
    done = set(compact_done(output, is_done, key))
    done |= set(compact_done(rejects, lambda record: not retry(record), key))
    return done


class ResultWriter:
    """Writes what a stage returned for records: outputs to one file, rejects (with the
    input's file and line) to the other, each made durable (one fsync per file and call),
    counting both and advancing the progress bar."""

    def __init__(self, out: AppendWriter, bad: AppendWriter, source: str, key: str, advance):
        self.out, self.bad, self.source, self.key, self.advance = out, bad, source, key, advance
        self.counts = {"already_done": 0, "written": 0, "rejected": 0, "stopped_early": 0}

    def write(self, batch: list[tuple[int, dict]], results: list[dict]) -> None:
        lines = {record[self.key]: number for number, record in batch}
        good = [r for r in results if REJECT_KEY not in r]
        failed = [_as_reject(r, self.source, lines) for r in results if REJECT_KEY in r]
        if failed:
            self.bad.write_many(failed)
        if good:
            self.out.write_many(good)
        self.counts["written"] += len(good)
        self.counts["rejected"] += len(failed)
        self.advance(len(batch))


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
    concurrency: int = 1,
) -> dict[str, int]:
    """Apply a batch function to (line, record) pairs, appending results durably.

    Records whose key already has a finished output (or a reject) are skipped (`done_ids`),
    so a re-run after a crash continues where it stopped. Outputs carrying `REJECT_KEY` go
    to the rejects file with the input's file and line; a reject for which `retry` is true
    (e.g. a failed model call) is removed on the next run and its record done again.
    `should_stop` is asked after each batch (e.g. a request budget ran out): no batch starts
    after it says yes, and `stopped_early` is counted.

    `concurrency` 1: one batch at a time, in input order; each is written before the next
    starts, so a kill loses at most the batch in flight. `concurrency` > 1 (a stage that waits
    on a server): up to that many batches run at once in worker threads and each is written
    the moment it is done (`stream_batches`): the files are in completion order while the
    stage runs (and after a stop, an error or a kill), and put back in input order once it
    has gone through every record. A kill loses at most the batches in flight. `fn` must
    then be thread-safe.
    """
    done = done_ids(output, rejects, is_done, key, retry)
    position: dict = {}
    with (
        AppendWriter(output) as out,
        AppendWriter(rejects) as bad,
        progress(description, total) as advance,
    ):
        writer = ResultWriter(out, bad, source, key, advance)
        todo = _batches(records, done, key, batch_size, writer, position)
        if concurrency > 1:
            stopped = stream_batches(todo, fn, writer, concurrency, should_stop)
        else:
            stopped = _run_in_order(todo, fn, writer, should_stop)
        writer.counts["stopped_early"] = int(stopped)
    if concurrency > 1 and not stopped:
        last = len(position)
        sort_records(output, lambda record: position.get(record.get(key), last))
        sort_records(rejects, lambda reject: position.get(reject.get("id"), last))
    return writer.counts


def _batches(
    records: Iterable[tuple[int, dict]],
    done: set,
    key: str,
    size: int,
    writer: ResultWriter,
    position: dict,
) -> Iterator[list[tuple[int, dict]]]:
    """The records not done yet in batches of `size` (the done ones counted as skipped);
    notes each key's place in the input in `position`."""
    batch: list[tuple[int, dict]] = []
    for number, record in records:
        position.setdefault(record[key], len(position))
        if record[key] in done:
            writer.counts["already_done"] += 1
            writer.advance()
            continue
        batch.append((number, record))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _run_in_order(
    batches: Iterator[list[tuple[int, dict]]],
    fn: BatchFn,
    writer: ResultWriter,
    should_stop: Callable[[], bool],
) -> bool:
    """Process and write the batches one after another; True when `should_stop` ended it."""
    for batch in batches:
        if should_stop():
            return True
        writer.write(batch, fn([record for _, record in batch]))
    return False


def stream_batches(
    batches: Iterator[list[tuple[int, dict]]],
    fn: BatchFn,
    writer: ResultWriter,
    concurrency: int,
    should_stop: Callable[[], bool],
) -> bool:
    """Keep `concurrency` batches in process in one thread pool, writing each as it finishes
    (in this thread: one writer) and starting the next at once: no batch waits for another.

    True when `should_stop` ended it (no batch starts after it says yes). On an error or an
    interrupt nothing new starts, the batches in flight are waited for and those that finished
    are written (work paid for is kept), then the error goes on.
    """
    running: dict[Future, list[tuple[int, dict]]] = {}

    def write_finished() -> None:
        """Wait for a batch to finish; write every finished one at once (or raise its error)."""
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        good = [future for future in finished if future.exception() is None]
        writer.write(
            [pair for future in good for pair in running.pop(future)],
            [result for future in good for result in future.result()],
        )
        for future in finished.difference(good):
            future.result()  # the stage failed: its error goes on

    with ThreadPoolExecutor(concurrency, thread_name_prefix="lmmixup-stage") as pool:
        try:
            for batch in batches:
                while len(running) >= concurrency:
                    write_finished()
                if should_stop():
                    return True
                running[pool.submit(fn, [record for _, record in batch])] = batch
            while running:
                write_finished()
            return False
        finally:
            _settle(running, writer)


def _settle(running: dict[Future, list[tuple[int, dict]]], writer: ResultWriter) -> None:
    """Wait for the batches still in flight and write those that finished without an error."""
    wait(running)
    good = [f for f in running if not f.cancelled() and f.exception() is None]
    writer.write([pair for f in good for pair in running[f]], [r for f in good for r in f.result()])
    running.clear()


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
