"""The per-step JSONL log of a training run (OUTPUT/steps.jsonl) and what is read back from it."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

from lmmixup.io.jsonl import dumps, iter_jsonl, read_records

STEPS_FILE = "steps.jsonl"


class StepLog:
    """Trainer callback methods: append every trainer log to a JSONL file, with wall times.

    `clocks` maps a part's name (e.g. "reward") to a function returning the seconds spent in
    it so far; a logged line gets the latest step's `step_seconds`, `{name}_seconds` and
    `{name}_fraction` (of `step_seconds`). On a resumed run, lines past the checkpoint's step
    are dropped first, so the file never holds a step twice (nor a line cut by a crash).
    """

    def __init__(self, path: str | Path, clocks: Mapping[str, Callable[[], float]] | None = None):
        self.path = Path(path)
        self.clocks = dict(clocks or {})
        self._started = 0.0
        self._clock_start: dict[str, float] = {}
        self._timing: dict[str, float] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.path.exists():
            kept = [
                line.raw
                for line in iter_jsonl(self.path)
                if line.error is None and line.value.get("step", 0) <= state.global_step
            ]
            self.path.write_text("".join(f"{raw}\n" for raw in kept), encoding="utf-8")

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()
        self._clock_start = {name: clock() for name, clock in self.clocks.items()}

    def on_step_end(self, args, state, control, **kwargs):
        seconds = time.perf_counter() - self._started
        timing = {"step_seconds": seconds}
        for name, clock in self.clocks.items():
            part = clock() - self._clock_start[name]
            timing[f"{name}_seconds"] = part
            timing[f"{name}_fraction"] = part / seconds if seconds > 0 else 0.0
        self._timing = timing

    def on_log(self, args, state, control, logs=None, **kwargs):
        line = {"step": state.global_step, "epoch": state.epoch, "time": time.time()}
        line.update(logs or {})
        if self._timing is not None:
            line.update(self._timing)
            self._timing = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(dumps(line) + "\n")


def step_logger(path: str | Path, clocks: Mapping[str, Callable[[], float]] | None = None):
    """A transformers `TrainerCallback` with the `StepLog` behaviour (transformers loads here)."""
    from transformers import TrainerCallback

    return type("StepLogger", (StepLog, TrainerCallback), {})(path, clocks)


def read_steps(output_dir: str | Path) -> list[dict]:
    """The lines of a run's steps.jsonl (empty when it has none)."""
    path = Path(output_dir) / STEPS_FILE
    return read_records(path) if path.exists() else []


def mean_step_seconds(steps: list[dict]) -> float | None:
    """Mean wall time of the logged steps, None when no step was timed."""
    times = [line["step_seconds"] for line in steps if "step_seconds" in line]
    return sum(times) / len(times) if times else None


def last_loss(steps: list[dict]) -> float | None:
    """The training loss of the last logged step, None when no loss was logged."""
    losses = [line["loss"] for line in steps if "loss" in line]
    return losses[-1] if losses else None
