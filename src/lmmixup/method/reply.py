"""Reading a distiller reply: `<think>..</think><answer>..</answer>`, its answer block, its pair.

One reading of "well formed" for distill, eval distiller and the GRPO format reward.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lmmixup.method.tasks import matches_task_pattern, task_parts

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
PARAGRAPH_PROMPT = "Continue this paragraph: {opening}"


@dataclass(frozen=True)
class ParsedOutput:
    """A distiller reply's first think block (None when absent) and first answer block."""

    think: str | None
    answer: str


def _think_block(text: str) -> tuple[str | None, int]:
    """The first closed think block that opens before any answer, and where it ends (else 0)."""
    opened = text.find(THINK_OPEN)
    answer = text.find(ANSWER_OPEN)
    if opened < 0 or 0 <= answer < opened:
        return None, 0
    closed = text.find(THINK_CLOSE, opened)
    if closed < 0:
        return None, 0
    return text[opened + len(THINK_OPEN) : closed].strip(), closed + len(THINK_CLOSE)


def _answer_span(text: str) -> tuple[str | None, int, int]:
    """The think block, where the first answer block's body starts and where it closes
    (-1 when there is no `<answer>`, or no `</answer>` after it)."""
    think, start = _think_block(text)
    opened = text.find(ANSWER_OPEN, start)
    if opened < 0:
        return think, -1, -1
    body = opened + len(ANSWER_OPEN)
    return think, body, text.find(ANSWER_CLOSE, body)


def parse_output(text: str) -> ParsedOutput | None:
    """The think and answer blocks of a reply; None without a closed `<answer>` block.

    The answer is the text between the first `<answer>` and the first `</answer>` after it;
    anything after that is ignored. Tags written inside the think block do not count.
    Both blocks are stripped of surrounding whitespace.
    """
    think, body, closed = _answer_span(text)
    if closed < 0:
        return None
    return ParsedOutput(think, text[body:closed].strip())


_BLOCK_BODY = r"(?:(?!</?(?:think|answer)>).)*"
_WELL_FORMED = re.compile(
    rf"\s*<think>{_BLOCK_BODY}</think>\s*<answer>{_BLOCK_BODY}</answer>\s*", re.DOTALL
)


def is_well_formed(text: str) -> bool:
    """Whether the whole reply is one think block then one answer block, only whitespace around."""
    return _WELL_FORMED.fullmatch(text) is not None


@dataclass(frozen=True)
class ReplyFormat:
    """How a distiller reply is formed: the one reading `distill`, `eval distiller` and the
    GRPO format reward share (see `reply_format`)."""

    parsed: ParsedOutput | None
    """The think block and the first closed answer block (`parse_output`); None without one."""
    unclosed: bool
    """An `<answer>` block opened and never closed: no answer, in every reading."""
    well_formed: bool
    """The whole reply is one think block then one answer block, only whitespace around."""
    layout: bool
    """The answer follows the task type's layout (paragraph: any non-blank text)."""

    @property
    def compliant(self) -> bool:
        """Well formed, and the answer in the task's layout."""
        return self.well_formed and self.layout


def reply_format(text: str, task_type: str) -> ReplyFormat:
    """How a reply's text is formed, for a task type: the one definition of a well-formed
    distiller reply.

    `text` is the reply as the model wrote it: from a backend, `closed_reply(generation)`
    (the `</answer>` a stop string stood for put back; an answer the model left open at
    end-of-sequence stays open); in GRPO, the completion, which has no stop strings.
    """
    think, body, closed = _answer_span(text)
    parsed = None if closed < 0 else ParsedOutput(think, text[body:closed].strip())
    return ReplyFormat(
        parsed=parsed,
        unclosed=body >= 0 and closed < 0,
        well_formed=is_well_formed(text),
        layout=parsed is not None and matches_task_pattern(parsed.answer, task_type),
    )


def _paragraph_pair(text: str) -> tuple[str, str] | None:
    """A paragraph as (continue-this prompt with its first sentence, the rest); None if one sentence."""
    parts = re.split(r"(?<=[.!?])\s+", text, maxsplit=1)
    if len(parts) < 2:
        return None
    opening, rest = parts
    return PARAGRAPH_PROMPT.format(opening=opening), rest


def answer_to_pair(answer: str, task_type: str) -> tuple[str, str] | None:
    """The (prompt, completion) pair an answer holds in its task type's layout; None if it lacks one.

    qa: question / answer; mcq: question with its options / the text after `Answer:`;
    tfq: the statement / `True` or `False` (with any explanation); cs: category / statement;
    paragraph: "Continue this paragraph: <first sentence>" / the remaining sentences.
    """
    parts = task_parts(answer, task_type)
    if parts is None:
        return None
    if task_type == "paragraph":
        return _paragraph_pair(parts["text"])
    return parts["prompt"], parts["completion"]
