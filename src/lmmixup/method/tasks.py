"""Task types of distilled pairs and the layout their `<answer>` block must follow (SPEC stage 4).

Each task type has a layout shown to the distiller and a pattern that finds the layout's parts
(`prompt` and `completion`, or the whole text for `paragraph`) inside an answer. The format
reward (SPEC stage 8) and the distill stage share these, so both judge an answer the same way.

Tolerance: labels (`Q:`, `A:`, `A)`..`D)`, `Answer:`, `C:`, `S:`) match in any letter case,
with optional whitespace before the `:` or `)`, and must not be the tail of a longer word
(`FAQ:` is not `Q:`). Labels must appear in the layout's order and every part must hold
some non-blank text; whatever surrounds them (line breaks, markdown) is free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lmmixup.records import TASK_TYPES

_FLAGS = re.IGNORECASE | re.DOTALL


@dataclass(frozen=True)
class TaskFormat:
    """A task type: what it is, the answer layout shown to the model, the pattern finding its parts."""

    name: str
    description: str
    layout: str
    pattern: re.Pattern[str]


TASK_FORMATS: dict[str, TaskFormat] = {
    "qa": TaskFormat(
        "qa",
        "a question and its answer",
        "Q: <the question>\nA: <the answer>",
        re.compile(r"\bQ\s*:(?P<prompt>.*?)\bA\s*:(?P<completion>.*)", _FLAGS),
    ),
    "mcq": TaskFormat(
        "mcq",
        "a multiple-choice question with four options and the correct letter",
        "Q: <the question>\nA) <option>\nB) <option>\nC) <option>\nD) <option>\n"
        "Answer: <the letter of the correct option>",
        re.compile(
            # Atomic groups: each option label is taken at its first occurrence, so a reply full
            # of options but no "Answer:" fails in linear time instead of backtracking.
            r"\bQ\s*:(?P<prompt>(?>.*?\bA\s*\))(?>.*?\bB\s*\))(?>.*?\bC\s*\))(?>.*?\bD\s*\)).*?)"
            r"\bAnswer\s*:(?P<completion>.*)",
            _FLAGS,
        ),
    ),
    "tfq": TaskFormat(
        "tfq",
        "a statement and whether it is true or false",
        "Statement: <a statement>\nAnswer: <True or False>",
        re.compile(
            r"^\s*(?:(?:Q|Statement)\s*:)?(?P<prompt>.*?)"
            r"\bAnswer\s*:\s*(?P<completion>(?:True|False)\b.*)",
            _FLAGS,
        ),
    ),
    "cs": TaskFormat(
        "cs",
        "a category and a statement about it",
        "C: <the category>\nS: <a statement about it>",
        re.compile(r"\bC\s*:(?P<prompt>.*?)\bS\s*:(?P<completion>.*)", _FLAGS),
    ),
    "paragraph": TaskFormat(
        "paragraph",
        "one paragraph of plain text",
        "<one self-contained paragraph of plain text>",
        re.compile(r"(?P<text>.*)", _FLAGS),
    ),
}


def task_format(task_type: str) -> TaskFormat:
    """The format of a task type; a ValueError naming the known types otherwise."""
    try:
        return TASK_FORMATS[task_type]
    except KeyError:
        raise ValueError(
            f"unknown task type {task_type!r}; known: {', '.join(TASK_TYPES)}"
        ) from None


def task_parts(answer: str, task_type: str) -> dict[str, str] | None:
    """The layout's parts found in an answer, stripped; None unless all are there and non-blank."""
    match = task_format(task_type).pattern.search(answer)
    if match is None:
        return None
    parts = {name: value.strip() for name, value in match.groupdict().items()}
    return parts if all(parts.values()) else None


def matches_task_pattern(answer: str, task_type: str) -> bool:
    """Whether an answer follows its task type's layout (paragraph: any non-blank text)."""
    return task_parts(answer, task_type) is not None
