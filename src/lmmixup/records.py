"""Pool records: the row formats we accept and their normalisation to one shape.

A pool record is a dict: `id` (str, unique), `prompt`, `completion`, `source`, optional
`task_type`, optional `meta` (dict, carried through untouched). Input columns we do not use
are kept in `meta`, so nothing the user gave is dropped.
"""

from __future__ import annotations

import hashlib
from typing import Any

TASK_TYPES = ("qa", "mcq", "tfq", "cs", "paragraph")
DEFAULT_MAX_CHARS = 1_000_000

_HUMAN_ROLES = {"human", "user"}
_MODEL_ROLES = {"gpt", "assistant", "model", "chatgpt", "bard", "bing"}


def effective_score(rating: dict) -> int:
    """The 0..5 score a rating stands for: the curation step's corrected `curated_score` when
    curation ran, else the judge's (or kNN-Bayes') `score`. Split, re-rating and selection
    all rank by it."""
    curated = rating.get("curated_score")
    return int(rating["score"] if curated is None else curated)


class BadRow(ValueError):
    """A row that cannot become a pool record; the message is the reject reason."""


def content_id(prompt: str, completion: str) -> str:
    """A stable id from the text: equal (prompt, completion) pairs get equal ids."""
    digest = hashlib.sha256(f"{prompt}\x00{completion}".encode()).hexdigest()
    return f"h{digest[:16]}"


def _text_field(row: dict, name: str) -> str:
    value = row[name]
    if not isinstance(value, str):
        raise BadRow(f"field '{name}' must be a string, got {type(value).__name__}")
    return value


def _first_exchange(turns: Any, role_key: str, text_key: str, field: str) -> tuple[str, str, list]:
    """The first human turn and the model turn that answers it; plus any earlier system turns."""
    if not isinstance(turns, list):
        raise BadRow(f"field '{field}' must be a list, got {type(turns).__name__}")
    system = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
            raise BadRow(f"{field}[{index}] must be an object with '{role_key}' and '{text_key}'")
        role = str(turn[role_key]).lower()
        if role == "system":
            system.append(turn[text_key])
            continue
        if role not in _HUMAN_ROLES:
            raise BadRow(
                f"{field}[{index}]: starts with a '{role}' turn, not a user turn "
                "(a continuation chunk has no first exchange)"
            )
        if index + 1 >= len(turns):
            raise BadRow(f"{field}: the first user turn has no answer")
        answer = turns[index + 1]
        if (
            not isinstance(answer, dict)
            or str(answer.get(role_key, "")).lower() not in _MODEL_ROLES
        ):
            raise BadRow(f"{field}[{index + 1}]: the first user turn is not followed by an answer")
        prompt, completion = turn[text_key], answer.get(text_key)
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise BadRow(f"{field}: turn texts must be strings")
        return prompt, completion, system
    raise BadRow(f"field '{field}' has no user turn")


def _extract_pair(row: dict) -> tuple[str, str, set[str], dict]:
    """Find (prompt, completion) in any supported format; also the keys used and extra meta."""
    if "prompt" in row and "completion" in row:
        return (
            _text_field(row, "prompt"),
            _text_field(row, "completion"),
            {"prompt", "completion"},
            {},
        )
    if "instruction" in row and "output" in row:
        instruction, output = _text_field(row, "instruction"), _text_field(row, "output")
        extra = row.get("input") or ""
        if not isinstance(extra, str):
            raise BadRow(f"field 'input' must be a string, got {type(extra).__name__}")
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return prompt, output, {"instruction", "input", "output"}, {}
    if "conversations" in row:
        prompt, completion, system = _first_exchange(
            row["conversations"], "from", "value", "conversations"
        )
        meta = {"system": system} if system else {}
        if len(row["conversations"]) > 2 + len(system):
            meta["turns"] = len(row["conversations"])
        return prompt, completion, {"conversations"}, meta
    if "messages" in row:
        prompt, completion, system = _first_exchange(row["messages"], "role", "content", "messages")
        meta = {"system": system} if system else {}
        return prompt, completion, {"messages"}, meta
    if "question" in row and "answer" in row:
        return _text_field(row, "question"), _text_field(row, "answer"), {"question", "answer"}, {}
    keys = ", ".join(sorted(row)[:8]) or "none"
    raise BadRow(
        "no known format: need prompt/completion, instruction/output, conversations, "
        f"messages or question/answer (keys: {keys})"
    )


def _row_id(row: dict, prompt: str, completion: str) -> str:
    if "id" not in row or row["id"] is None:
        return content_id(prompt, completion)
    value = row["id"]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRow(f"field 'id' must be a string or an integer, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise BadRow("field 'id' is empty")
    return text


def normalise_row(row: Any, *, default_source: str, max_chars: int = DEFAULT_MAX_CHARS) -> dict:
    """Turn one input row (any supported format) into a pool record, or raise BadRow."""
    if not isinstance(row, dict):
        raise BadRow(f"a record must be a JSON object, got {type(row).__name__}")
    prompt, completion, used, meta = _extract_pair(row)
    for name, text in (("prompt", prompt), ("completion", completion)):
        if not text.strip():
            raise BadRow(f"empty {name}")
        if len(text) > max_chars:
            raise BadRow(f"{name} has {len(text):,} characters, over the limit of {max_chars:,}")
        if "\x00" in text:
            raise BadRow(f"{name} contains a NUL character")
    source = row.get("source", default_source)
    if not isinstance(source, str) or not source.strip():
        raise BadRow("field 'source' must be a non-empty string")
    record: dict[str, Any] = {
        "id": _row_id(row, prompt, completion),
        "prompt": prompt,
        "completion": completion,
        "source": source,
    }
    task_type = row.get("task_type")
    if task_type is not None:
        if task_type not in TASK_TYPES:
            raise BadRow(f"task_type must be one of {', '.join(TASK_TYPES)}, got {task_type!r}")
        record["task_type"] = task_type
    given_meta = row.get("meta", {})
    if not isinstance(given_meta, dict):
        raise BadRow(f"field 'meta' must be an object, got {type(given_meta).__name__}")
    extra = {k: v for k, v in row.items() if k not in used | {"id", "source", "task_type", "meta"}}
    merged = {**extra, **meta, **given_meta}
    if merged:
        record["meta"] = merged
    return record
