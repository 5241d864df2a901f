"""Which executor runs the per-record stages of a run: chosen once, used by every stage.

`lmmixup run` picks it from the config's `executor` section (`executor_for`) and installs it
for the run (`using`); a stage asks for it with `current_executor()`, which is the local
executor when none is installed (standalone stage commands, tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from lmmixup.config import ExecutorConfig
from lmmixup.runtime.executor import Executor, LocalExecutor

_current: ContextVar[Executor | None] = ContextVar("lmmixup_executor", default=None)


def current_executor() -> Executor:
    """The executor installed for this run, else a local one."""
    return _current.get() or LocalExecutor()


@contextmanager
def using(executor: Executor) -> Iterator[Executor]:
    """Run the stages inside the block with `executor`."""
    token = _current.set(executor)
    try:
        yield executor
    finally:
        _current.reset(token)


def executor_for(settings: ExecutorConfig) -> Executor:
    """The executor the settings name (Ray is imported only when asked for)."""
    if settings.kind == "ray":
        from lmmixup.runtime.ray_executor import RayExecutor

        return RayExecutor(settings)
    return LocalExecutor()
