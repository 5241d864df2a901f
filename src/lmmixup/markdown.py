"""The one Markdown table writer used by reports, cards and experiment tables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[Any]], *, right_from: int | None = None
) -> list[str]:
    """The lines of a Markdown table; columns from index ``right_from`` on are right-aligned.

    Cells are written with ``str``; format numbers before passing them.
    """
    rule = "|" + "".join(
        "---:|" if right_from is not None and i >= right_from else "---|"
        for i in range(len(header))
    )
    lines = ["| " + " | ".join(header) + " |", rule]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
