"""The Ray executor: a per-record stage as a Ray Data `map_batches` over an actor pool.

The driver (the `lmmixup run` process) does what the local executor does around the work:
it computes the ids already done (`done_ids`, the same resume rule), sends only the others
to Ray Data, and writes each batch's results (`ResultWriter`: outputs, rejects with their
input line) the moment it comes back, so one process writes the files and a killed driver
loses only the batches in flight; the same command again continues.

Each actor of the pool (`StageWorker`) holds one copy of the stage: the stage is pickled
with its settings, `open()`s its model in the actor and `close()`s it when Ray Data shuts the
pool down. A dead actor is restarted and its batch retried by Ray (`max_restarts`). Batches
come back in input order (Ray Data's `preserve_order`), so an uninterrupted run writes the
lines in the local executor's order.

Per stage run, the driver owns one `Board` actor: the request budgets every worker shares
(`max_requests` holds across all of them) and the reports the workers send when they
close (usage, cache hits), summed into the stage's report. A server backend's concurrency
is split between the actors (`worker_threads`). The call cache is the SQLite file at the stage's cache path,
opened by every worker: one file on one machine (SQLite's WAL makes that safe across
processes); on a cluster of several machines each machine has its own file at that path.

With `executor.vllm_processor`, a stage whose model is `backend: vllm` goes through
ray.data.llm's vLLM processor instead of the actor pool (`ray_llm`); resume and writing stay here.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lmmixup.backends.sharing import share_limits
from lmmixup.config import ExecutorConfig
from lmmixup.errors import ConfigError, LmmixupError
from lmmixup.io.jsonl import AppendWriter
from lmmixup.progress import progress
from lmmixup.runtime.executor import RecordStage, ResultWriter, StageRun, done_ids
from lmmixup.runtime.ray_llm import routed_backend, run_route

log = logging.getLogger(__name__)
REPORT_WAIT_S = 30.0
"""How long the driver waits, after the last batch, for the workers' closing reports."""
SKIPPED = ""
"""A result a worker did not compute (its stage had stopped): not written, done next run."""


def _ray():
    """The ray module, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ConfigError(
            "executor ray: Ray is not installed; pip install 'lmmixup[ray]' (or 'ray[data]'), "
            "or run with --executor local"
        ) from exc
    return ray


def connect(address: str | None):
    """Join the Ray cluster at `address` (once per process) and set Ray Data up for stages:
    results in input order, no progress bars of its own."""
    ray = _ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise LmmixupError(
                f"executor ray: cannot join the Ray cluster at {address or '$RAY_ADDRESS'}: "
                f"{str(exc).splitlines()[0]}; start one (`ray start --head`) and pass the "
                "address it prints with --ray-address"
            ) from exc
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return ray


class Board:
    """One stage run's shared state, a Ray actor owned by the driver: request budgets by
    model, and which workers opened and closed (with their reports)."""

    def __init__(self) -> None:
        self._left: dict[str, int] = {}
        self._latest: dict[str, str] = {}  # actor id -> its latest incarnation
        self._reports: dict[str, dict] = {}  # incarnation -> its closing report
        self._replaced = 0

    def take(self, model: str, limit: int) -> bool:
        """Take one request ticket of `model`'s budget of `limit`; False once spent."""
        left = self._left.setdefault(model, limit)
        if left <= 0:
            return False
        self._left[model] = left - 1
        return True

    def opened(self, actor: str, incarnation: str) -> None:
        if actor in self._latest and self._latest[actor] not in self._reports:
            self._replaced += 1  # restarted after a crash: that incarnation never reports
        self._latest[actor] = incarnation

    def closed(self, incarnation: str, report: dict) -> None:
        self._reports[incarnation] = report

    def state(self) -> tuple[int, int, list[dict]]:
        """(workers not closed yet, workers lost in a crash, the reports received)."""
        pending = sum(inc not in self._reports for inc in self._latest.values())
        return pending, self._replaced, list(self._reports.values())


class _BoardBudget:
    """A request budget kept by the Board: one ticket per `take`, across every worker."""

    def __init__(self, board, model: str, limit: int):
        self.board, self.model, self.limit = board, model, limit

    def take(self) -> bool:
        return _ray().get(self.board.take.remote(self.model, self.limit))


class BoardLimits:
    """The `SharedLimits` of a worker: budgets on the Board, 1/actors of the concurrency."""

    def __init__(self, board, actors: int):
        self.board, self.actors = board, actors

    def budget(self, limit: int, model: str) -> _BoardBudget:
        return _BoardBudget(self.board, model, limit)

    def concurrency(self, configured: int) -> int:
        return max(1, configured // self.actors)


def worker_threads(stage: RecordStage, actors: int) -> int:
    """The `process` calls one actor runs at once: its share of the stage's concurrency (a
    server backend's requests in flight, split between the actors), at least 1."""
    return max(1, getattr(stage, "concurrency", 1) // actors)


class StageWorker:
    """Ray Data's callable class: one opened stage per actor.

    A batch is columns `seq` (position in the driver's list) and `record` (JSON text); the
    answer adds `result` (JSON text, or SKIPPED once the stage said stop) and `stop`.
    """

    def __init__(self, stage: RecordStage, board, actors: int):
        ray = _ray()
        share_limits(BoardLimits(board, actors))
        self.board = board
        self.incarnation = uuid.uuid4().hex
        stage.open()
        self.stage: RecordStage | None = stage
        # registered once open: an actor the pool stops while it still loads has nothing to report
        ray.get(board.opened.remote(ray.get_runtime_context().get_actor_id(), self.incarnation))
        self.threads = worker_threads(stage, actors)
        self.stopped = False

    def __call__(self, batch: dict) -> dict:
        count = len(batch["seq"])
        if self.stopped:  # no request after a stop (e.g. the shared request cap is spent)
            results = [SKIPPED] * count
        else:
            answers = self._process([json.loads(text) for text in batch["record"]])
            if len(answers) != count:
                raise LmmixupError(
                    f"stage {self.stage.description!r} returned {len(answers)} results for "
                    f"{count} records"
                )
            results = [json.dumps(answer, ensure_ascii=False) for answer in answers]
            self.stopped = self.stage.should_stop()
        return {"seq": batch["seq"], "result": results, "stop": [self.stopped] * count}

    def _process(self, records: list[dict]) -> list[dict]:
        """The stage's results for the records: `process` on chunks of its batch size, as
        many at once as this actor's share of the stage's concurrency."""
        size = self.stage.batch_size
        chunks = [records[i : i + size] for i in range(0, len(records), size)]
        if self.threads == 1:
            answers = [self.stage.process(chunk) for chunk in chunks]
        else:
            with ThreadPoolExecutor(self.threads, thread_name_prefix="lmmixup-ray") as pool:
                answers = list(pool.map(self.stage.process, chunks))
        return [answer for chunk in answers for answer in chunk]

    def __del__(self) -> None:
        stage, self.stage = getattr(self, "stage", None), None
        if stage is not None:  # opened: report what it counted to the driver's Board
            _ray().get(self.board.closed.remote(self.incarnation, stage.close()))


class RayExecutor:
    """Runs a per-record stage on a Ray cluster (module doc); the `Executor` protocol."""

    def __init__(self, settings: ExecutorConfig):
        _ray()
        self.settings = settings

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
        done = done_ids(output, rejects, stage.is_done, "id", stage.retry)
        with (
            AppendWriter(output) as out,
            AppendWriter(rejects) as bad,
            progress(stage.description, total) as advance,
        ):
            writer = ResultWriter(out, bad, source, "id", advance)
            todo: list[tuple[int, dict]] = []
            for number, record in records:
                if record["id"] in done:
                    writer.counts["already_done"] += 1
                    advance()
                else:
                    todo.append((number, record))
            if not todo:
                return StageRun(writer.counts)
            ray = connect(self.settings.address)
            backend = routed_backend(self.settings, stage)
            if backend is not None:  # ray.data.llm's vLLM processor makes the model calls
                report = run_route(self.settings, stage, backend, todo, writer)
                return StageRun(writer.counts, report)
            board = ray.remote(num_cpus=0)(Board).remote()
            try:
                writer.counts["stopped_early"] = int(self._stream(stage, todo, board, writer))
                report = _collect(board)
            finally:
                ray.kill(board)
        return StageRun(writer.counts, report)

    def _stream(self, stage: RecordStage, todo: list, board, writer: ResultWriter) -> bool:
        """Send the records through the actor pool, writing each batch as it returns; True
        when a worker's stage said stop. The loop never breaks off (Ray Data would kill the
        actors before they report): after a stop, the workers answer SKIPPED at once (those
        records are done next run) and what they finished is written."""
        stopped = False
        try:
            dataset = self._dataset(stage, todo, board)
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                kept = [(int(s), r) for s, r in zip(batch["seq"], batch["result"], strict=True)]
                kept = [(s, r) for s, r in kept if r != SKIPPED]
                writer.write(
                    [(todo[s][0], {"id": todo[s][1]["id"]}) for s, _ in kept],
                    [json.loads(r) for _, r in kept],
                )
                stopped = stopped or bool(batch["stop"].any())
        except Exception as exc:
            own = own_error(exc)
            if own is None:
                raise
            raise own from None
        return stopped

    def _dataset(self, stage: RecordStage, todo: list, board):
        """The records as a Ray dataset mapped by an actor pool of `StageWorker`s."""
        ray = _ray()
        settings = self.settings
        size = settings.batch_size or stage.batch_size * worker_threads(stage, settings.actors)
        rows = [
            {"seq": seq, "record": json.dumps(record, ensure_ascii=False)}
            for seq, (_, record) in enumerate(todo)
        ]
        blocks = max(1, min(len(rows) // size + 1, 200))
        gpus = settings.num_gpus
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        with warnings.catch_warnings():  # max_restarts has no named parameter in Ray Data
            warnings.simplefilter("ignore")
            return ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
                StageWorker,
                fn_constructor_args=(stage, board, settings.actors),
                batch_size=size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=settings.actors),
                num_cpus=settings.num_cpus,
                num_gpus=gpus,
                max_restarts=settings.max_restarts,
                max_task_retries=settings.max_restarts,
            )


def _collect(board) -> dict[str, Any]:
    """The workers' closing reports summed (`merge_reports`), waiting up to REPORT_WAIT_S."""
    ray = _ray()
    deadline = time.monotonic() + REPORT_WAIT_S
    while True:
        pending, lost, reports = ray.get(board.state.remote())
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if pending or lost:
        log.warning(
            "the reports (model usage, cache hits) of %d Ray workers never came back (a "
            "worker crashed or was slow to close); the stage's counts leave them out",
            pending + lost,
        )
    return merge_reports(reports)


def merge_reports(reports: list[dict]) -> dict[str, Any]:
    """Several workers' reports as one: numbers summed, dicts merged key by key, anything
    else (a reason, a path) as the first report that has it says."""
    merged: dict[str, Any] = {}
    for report in reports:
        for key, value in report.items():
            if key not in merged:
                merged[key] = merge_reports([value]) if isinstance(value, dict) else value
            elif isinstance(value, dict) and isinstance(merged[key], dict):
                merged[key] = merge_reports([merged[key], value])
            elif _number(value) and _number(merged[key]):
                merged[key] += value
    return merged


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def own_error(exc: BaseException) -> LmmixupError | None:
    """The lmmixup error a worker raised, out of the exceptions Ray wraps it in."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, LmmixupError):
            return current
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        current = cause if isinstance(cause, BaseException) else current.__cause__
    return None
