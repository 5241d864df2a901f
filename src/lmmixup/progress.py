"""Progress bars (rich) with rate and ETA; silent when the CLI runs with --quiet."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class Advance(Protocol):
    def __call__(self, amount: int = 1) -> None: ...


_enabled = True
LIBRARY_BAR_SWITCHES = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
"""Environment settings that turn off the libraries' own bars (transformers' "Loading
weights", hub downloads, any tqdm bar); read when those libraries load."""


_replaced_settings: dict[str, str | None] = {}


def set_enabled(enabled: bool) -> None:
    """Turn progress bars on or off for this process, the libraries' bars included."""
    global _enabled
    _enabled = enabled
    if enabled:  # put back what turning them off changed
        for name, previous in _replaced_settings.items():
            if previous is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = previous
        _replaced_settings.clear()
        return
    for name, value in LIBRARY_BAR_SWITCHES.items():
        _replaced_settings.setdefault(name, os.environ.get(name))
        os.environ[name] = value
    if "huggingface_hub" in sys.modules:  # loaded already: tell them directly
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


@contextmanager
def progress(description: str, total: int | None, unit: str = "rec") -> Iterator[Advance]:
    """A progress bar for a loop; yields a function that advances it."""
    if not _enabled:
        yield lambda amount=1: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[progress.data.speed]{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=total, rate="")

        def advance(amount: int = 1) -> None:
            bar.advance(task, amount)
            speed = bar.tasks[task].speed
            if speed:
                bar.update(task, rate=f"{speed:,.1f} {unit}/s")

        yield advance
