"""The distiller's prompt: a cluster's members linearised under the merge instruction (SPEC 4).

`lmmixup distill` sends it, SFT trains on it and `eval distiller` asks it, so the three agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lmmixup.config import DistillConfig
from lmmixup.method.reply import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN
from lmmixup.method.tasks import task_format

TRUNCATION_MARKER = " [...]"

SYSTEM_PROMPT = (
    "You merge a group of related examples into one better example. Keep all the essential "
    "information of the group, drop repetition and mistakes, and make the result clear, "
    "correct and complete.\n"
    "Reply with exactly these two blocks and nothing outside them:\n"
    "<think>\nshort notes on what to keep and how to combine it\n</think>\n"
    "<answer>\nthe merged example, in the layout the user asks for\n</answer>"
)
# The layout comes last, right before the reply: a small model follows what it read last.
USER_PROMPT = (
    "Merge these {count} examples into a single coherent, high-quality example.\n\n{examples}"
    "\n\nThe merged example is {description}. Write it in the <answer> block in this layout:\n"
    "{layout}"
)


def _cut(text: str, limit: int) -> str:
    """The text, or its first `limit` characters followed by the truncation marker."""
    return text if len(text) <= limit else text[:limit].rstrip() + TRUNCATION_MARKER


def shown_member(member: Mapping[str, Any], max_chars: int) -> tuple[str, str]:
    """A member's prompt and completion as the distiller is shown them: at most `max_chars`
    characters of content, each cut part ending in the truncation marker.

    The prompt may use half the room, or more when the completion is short; the completion
    gets the rest.
    """
    prompt, completion = member["prompt"].strip(), member["completion"].strip()
    prompt_room = max(max_chars // 2, max_chars - len(completion))
    completion_room = max_chars - min(len(prompt), prompt_room)
    return _cut(prompt, prompt_room), _cut(completion, completion_room)


def _member_block(member: Mapping[str, Any], max_chars: int) -> str:
    """One member as `Q: prompt` / `A: completion`, cut as `shown_member` cuts it."""
    prompt, completion = shown_member(member, max_chars)
    return f"Q: {prompt}\nA: {completion}"


def linearise(members: Sequence[Mapping[str, Any]], max_member_chars: int) -> str:
    """The members as `Q:`/`A:` blocks separated by blank lines, each cut to `max_member_chars`."""
    return "\n\n".join(_member_block(member, max_member_chars) for member in members)


def build_messages(
    members: Sequence[Mapping[str, Any]], task_type: str, cfg: DistillConfig
) -> list[dict]:
    """The chat messages asking the distiller to merge a cluster into one pair of `task_type`."""
    task = task_format(task_type)
    user = USER_PROMPT.format(
        count=len(members),
        examples=linearise(members, cfg.max_member_chars),
        description=task.description,
        layout=task.layout,
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


# ---------------------------------------------------------------------------- a training record


def target_text(record: dict) -> str:
    """The SFT target of a record: think block and answer block; no EOS.

    A record without a worked solution gets a short think that says what the merge does, so
    every target has the `<think>..</think><answer>..</answer>` form the format reward asks for.
    """
    answer = f"{ANSWER_OPEN}\n{record['answer']}\n{ANSWER_CLOSE}"
    think = (record.get("think") or "").strip() or default_think(record)
    return f"{THINK_OPEN}\n{think}\n{THINK_CLOSE}\n\n{answer}"


def default_think(record: dict) -> str:
    """A plain account of the merge for records whose seed has no reasoning to show."""
    count = len(record.get("members") or [])
    return (
        f"The {count} variants describe the same {record['task_type']} item with gaps and noise; "
        "keep what they agree on, fix the errors and restore what some of them leave out."
    )


def prompt_messages(record: dict, cfg: DistillConfig | None = None) -> list[dict]:
    """The distiller's chat prompt for a record: the same one `lmmixup distill` sends."""
    return build_messages(record["members"], record["task_type"], cfg or DistillConfig())
