"""Training rows from MIXTURE records: the split files, and prompt/completion tokenisation.

Prompts are rendered exactly as `HFChatModel` renders them at inference (chat template with the
generation prompt, then tokenised without special tokens), so the distiller is trained on the
context it later sees in `lmmixup distill`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmmixup.backends.chat import render_chat
from lmmixup.errors import LmmixupError
from lmmixup.io.jsonl import read_records
from lmmixup.method.prompt import prompt_messages, target_text

IGNORE_INDEX = -100


def read_split(mixture_dir: str | Path, split: str) -> list[dict]:
    """The records of one MIXTURE split file (`sft`, `grpo_train`, `grpo_test`); never empty."""
    path = Path(mixture_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise LmmixupError(f"{path} does not exist; build it with `lmmixup mixture build -o DIR`")
    records = read_records(path)
    if not records:
        raise LmmixupError(f"{path} holds no records")
    return records


def prompt_ids(tokenizer: Any, messages: list[dict]) -> list[int]:
    """Token ids of a chat prompt ready for the reply, as `HFChatModel` feeds it."""
    return tokenizer(render_chat(tokenizer, messages), add_special_tokens=False)["input_ids"]


def completion_example(
    tokenizer: Any, messages: list[dict], completion: str
) -> dict[str, list[int]]:
    """Tokens and labels of a chat prompt and its reply: the prompt masked, the reply plus EOS
    supervised.

    The prompt is rendered as `prompt_ids` renders it; the reply is tokenised on its own and
    followed by the tokenizer's EOS token, so the model learns to stop right after it.
    """
    if tokenizer.eos_token_id is None:
        raise LmmixupError("the tokenizer has no EOS token; training targets must end with one")
    prompt = prompt_ids(tokenizer, messages)
    target = tokenizer(completion, add_special_tokens=False)["input_ids"]
    target.append(tokenizer.eos_token_id)
    return {"input_ids": prompt + target, "labels": [IGNORE_INDEX] * len(prompt) + target}


def sft_example(record: dict, tokenizer: Any) -> dict[str, list[int]]:
    """Tokens and labels of one SFT record: the cluster prompt masked, `target_text(record)`
    plus EOS supervised (so the model stops right after `</answer>`)."""
    return completion_example(tokenizer, prompt_messages(record), target_text(record))


def grpo_row(record: dict) -> dict[str, Any]:
    """One GRPO prompt: the chat messages, the task type and the reference answer for alignment."""
    return {
        "prompt": prompt_messages(record),
        "task_type": record["task_type"],
        "reference": record["answer"],
    }


@dataclass(frozen=True)
class Rows:
    """Training rows that fit the length limit, and how many records did not."""

    rows: list[dict]
    too_long: int


def fitting_rows(
    records: list[dict],
    make_row: Callable[[dict], dict],
    length: Callable[[dict], int],
    limit: int,
    what: str,
) -> Rows:
    """The rows of records whose `length` is at most `limit`; an error when none fits.

    An over-long record is left out, never truncated: a cut target would lose its EOS and a
    cut prompt its members.
    """
    rows, too_long = [], 0
    for record in records:
        row = make_row(record)
        if length(row) <= limit:
            rows.append(row)
        else:
            too_long += 1
    if not rows:
        raise LmmixupError(f"no record fits {what}={limit} tokens ({too_long} are longer)")
    return Rows(rows, too_long)
