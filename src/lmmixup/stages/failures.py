"""What to tell a user when a stage's model calls failed, beyond "re-run to retry".

A re-run retries every failed item, which helps with a server that was down or busy, but not
with prompts longer than the server's context, and a run where most items failed usually
has a cause to fix first. `failure_note` names the cause and the fix for those two cases;
the stage commands print it and exit non-zero, `lmmixup run` shows it among its warnings,
and a stage's `partial_reason` carries it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmmixup.backends.openai_replies import CONTEXT_FIX
from lmmixup.io.jsonl import read_records

MOSTLY_FAILED = 0.5
"""More than this share of a stage's items failed: say so loudly, not only in the counts."""

_MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class FailureNote:
    """Why a stage's items failed (with the numbers) and what to do about it."""

    message: str
    advice: str

    def line(self) -> str:
        return f"{self.message}; what to do: {self.advice}"


def failure_note(
    what: str, failed: int, total: int, usage: dict | None, first_error: str | None
) -> FailureNote | None:
    """The note for `failed` of `total` items (`what`: "ratings", "clusters") that failed,
    given the backend's `usage` (its `context_overflows`) and the first failure's error;
    None when a plain re-run is the right advice."""
    overflows = (usage or {}).get("context_overflows", 0)
    if overflows:
        return FailureNote(
            f"{failed} of {total} {what} failed; {overflows} requests had a prompt longer than "
            "the server's context",
            CONTEXT_FIX,
        )
    if total and failed / total > MOSTLY_FAILED:
        error = (first_error or "none recorded")[:_MAX_ERROR_CHARS]
        return FailureNote(
            f"{failed} of {total} {what} failed (first error: {error})",
            "fix what the error names (the server down or overloaded, a wrong model name or "
            "URL, the request cap) and run the same command again: only the failures are "
            "retried",
        )
    return None


def rate_failures(counts: dict[str, Any]) -> FailureNote | None:
    """The note on a rate stage's failed ratings, from its counts (the judge's under "judge")."""
    return failure_note(
        "ratings",
        counts.get("failed", 0),
        counts.get("rated", 0) + counts.get("failed", 0),
        (counts.get("judge") or {}).get("judge_usage"),
        counts.get("first_error"),
    )


def distill_failures(counts: dict[str, Any], reason: str) -> FailureNote | None:
    """The note on the clusters a distill stage's backend failed on (rejects with `reason`)."""
    reasons = counts.get("reject_reasons", {})
    return failure_note(
        "clusters",
        reasons.get(reason, 0),
        counts.get("distilled", 0) + sum(reasons.values()),
        counts.get("distiller_usage"),
        counts.get("first_error"),
    )


def first_error(rejects_path: str | Path, reason: str) -> dict[str, str]:
    """{"first_error": ...} from the first reject with `reason` that says why ({} when none
    does)."""
    path = Path(rejects_path)
    if not path.exists():
        return {}
    for record in read_records(path):
        error = (record.get("raw") or {}).get("error")
        if record.get("reason") == reason and error:
            return {"first_error": str(error)}
    return {}
