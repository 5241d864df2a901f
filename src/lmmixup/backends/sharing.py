"""Limits a server backend shares with the other processes of a run.

A model object enforces its request cap (`max_requests`) and its concurrency on its own. When
several processes run one stage (the Ray executor's workers), the executor installs, in each
of them and before the stage opens its model, a `SharedLimits` that gives the model a request
budget shared by all of them and its share of the concurrency. With none installed (the
local executor), each model keeps its own limits.
"""

from __future__ import annotations

from typing import Protocol


class RequestBudget(Protocol):
    """Request tickets: `take()` is False once `limit` requests have been taken."""

    limit: int | None

    def take(self) -> bool: ...


class SharedLimits(Protocol):
    """What a process running part of a stage shares with the others."""

    def budget(self, limit: int, model: str) -> RequestBudget:
        """The budget of `limit` requests shared by every process using `model` (a
        fingerprint) in this stage."""
        ...

    def concurrency(self, configured: int) -> int:
        """This process's share of the configured requests in flight."""
        ...


_installed: list[SharedLimits] = []


def share_limits(limits: SharedLimits | None) -> None:
    """Install (or, with None, remove) the limits this process shares with others."""
    _installed.clear()
    if limits is not None:
        _installed.append(limits)


def shared_limits() -> SharedLimits | None:
    """The installed shared limits, None when this process runs a stage alone."""
    return _installed[0] if _installed else None
