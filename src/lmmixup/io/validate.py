"""Schema checks of stage inputs: a file is read whole, in one pass, before any model loads.

One record kind per stage input: pool records (rate, cluster, distill's `--pool`), rated
records (split, select), cluster records (distill) and MIXTURE test records (eval distiller).
Each kind names the fields its readers use. A problem is one line naming the file, the line
and the field, and what to do, e.g. `low.jsonl:7: field 'source' missing; a pool record
needs ...`. Keys (`id`, `cluster_id`, a cluster's members) must be unique within a file; a
repeat names both lines.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmmixup.errors import LmmixupError
from lmmixup.io.jsonl import Line, iter_jsonl
from lmmixup.records import TASK_TYPES

_JSON_NAMES = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "a list",
    dict: "an object",
    type(None): "null",
}


def _describe(value: Any) -> str:
    """A value as a user would name it: `integer 7`, `string "essay"`, `a list`, `null`."""
    name = _JSON_NAMES.get(type(value), type(value).__name__)
    if isinstance(value, str | int | float):
        text = json.dumps(value, ensure_ascii=False)
        text = text if len(text) <= 40 else text[:37] + "..."
        return f"{name} {text}"
    return name


# ---------------------------------------------------------------------------- field rules


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_score(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 5


def _number_in(low: float, high: float) -> Callable[[Any], bool]:
    return lambda value: _is_number(value) and low <= value <= high


def _is_task_type(value: Any) -> bool:
    return value in TASK_TYPES


def _is_names(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_name(item) for item in value)


def _is_member(value: Any) -> bool:
    return isinstance(value, dict) and all(
        _is_text(value.get(key)) for key in ("prompt", "completion")
    )


def _or_null(accepts: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or accepts(value)


@dataclass(frozen=True)
class Field:
    """A field a reader uses: its name, what it must hold (in words and as a test)."""

    name: str
    expected: str
    accepts: Callable[[Any], bool]
    required: bool = True


def _fields_problem(record: dict, fields: Iterable[Field], prefix: str = "") -> str | None:
    """The first field of `record` that is missing or holds the wrong thing, in words."""
    for field in fields:
        if field.name not in record:
            if field.required:
                return f"field '{prefix}{field.name}' missing"
            continue
        value = record[field.name]
        if not field.accepts(value):
            return f"field '{prefix}{field.name}' must be {field.expected}, got {_describe(value)}"
    return None


_TASK_TYPE_WORDS = f"one of {', '.join(TASK_TYPES)}"
_POOL_FIELDS = (
    Field("id", "a non-empty string", _is_name),
    Field("prompt", "a string", _is_text),
    Field("completion", "a string", _is_text),
    Field("source", "a non-empty string", _is_name),
    Field("task_type", f"{_TASK_TYPE_WORDS} or null", _or_null(_is_task_type), required=False),
)
_RATING_FIELDS = (
    Field("score", "an integer 0-5", _is_score),
    Field("curated_score", "an integer 0-5", _is_score, required=False),
    Field("overall", "a number 1-10 or null", _or_null(_number_in(1, 10)), required=False),
    Field("expected_overall", "a number 1-10 or null", _or_null(_number_in(1, 10)), required=False),
    Field("expected_score", "a number 0-5 or null", _or_null(_number_in(0, 5)), required=False),
)
_RATING_ERROR = Field("rating_error", "a string (why the rating failed)", _is_text)


def _rating_problem(record: dict) -> str | None:
    """What is wrong with a rated record's `rating`: its fields, or a failure without a reason."""
    rating = record["rating"]
    if rating is None:
        return _fields_problem(record, [_RATING_ERROR])
    return _fields_problem(rating, _RATING_FIELDS, prefix="rating.")


# ---------------------------------------------------------------------------- record kinds


def _size_problem(cluster: dict) -> str | None:
    """A cluster's optional `size` must be the number of its members."""
    if "size" not in cluster:
        return None
    size, count = cluster["size"], len(cluster["member_ids"])
    if isinstance(size, bool) or size != count:
        return f"field 'size' is {_describe(size)} but member_ids holds {count} ids"
    return None


@dataclass(frozen=True)
class Unique:
    """Values each record claims that no other record of the file may claim."""

    label: str
    values: Callable[[dict], Iterable[str]]
    rule: str


@dataclass(frozen=True)
class RecordKind:
    """What one kind of stage input holds, and what to tell a user whose file does not."""

    fields: tuple[Field, ...]
    hint: str
    unique: tuple[Unique, ...]
    check: Callable[[dict], str | None] | None = None
    needs_rating: bool = False


_UNIQUE_ID = Unique("id", lambda record: [record["id"]], "ids must be unique within a file")

POOL_RECORD = RecordKind(
    _POOL_FIELDS,
    "a pool record needs id, prompt, completion and source; run `lmmixup data import` to make one",
    (_UNIQUE_ID,),
)
RATED_RECORD = RecordKind(
    (*_POOL_FIELDS, Field("rating", "an object or null", _or_null(lambda v: isinstance(v, dict)))),
    "a rated record is a pool record (id, prompt, completion, source) with the `rating` "
    "that `lmmixup rate` writes; run `lmmixup rate` first",
    (_UNIQUE_ID,),
    check=_rating_problem,
    needs_rating=True,
)
CLUSTER_RECORD = RecordKind(
    (
        Field("cluster_id", "a non-empty string", _is_name),
        Field("source", "a non-empty string", _is_name),
        Field("member_ids", "a non-empty list of record ids (strings)", _is_names),
    ),
    "a cluster record needs cluster_id, source and member_ids (ids of pool records); "
    "run `lmmixup cluster` to make one",
    (
        Unique(
            "cluster_id",
            lambda record: [record["cluster_id"]],
            "cluster ids must be unique within a file",
        ),
        Unique(
            "member",
            lambda record: record["member_ids"],
            "a pool record belongs to one cluster only",
        ),
    ),
    check=_size_problem,
)
MIXTURE_RECORD = RecordKind(
    (
        Field("id", "a non-empty string", _is_name),
        Field("task_type", _TASK_TYPE_WORDS, _is_task_type),
        Field(
            "members",
            "a non-empty list of objects with string prompt and completion",
            lambda value: isinstance(value, list) and bool(value) and all(map(_is_member, value)),
        ),
        Field("answer", "a string", _is_text),
    ),
    "a test record needs id, task_type, members (each with prompt and completion) and "
    "answer; `lmmixup mixture build` writes grpo_test.jsonl",
    (_UNIQUE_ID,),
)


# ---------------------------------------------------------------------------- reading


def _record_problem(line: Line, kind: RecordKind) -> str | None:
    """What is wrong with one line as a record of `kind`, None when nothing is."""
    if line.error is not None:
        return line.error
    if not isinstance(line.value, dict):
        return f"a record must be a JSON object, got {_describe(line.value)}"
    problem = _fields_problem(line.value, kind.fields)
    if problem is None and kind.check is not None:
        problem = kind.check(line.value)
    return problem


def _open_problem(path: Path) -> str | None:
    if not path.exists():
        return "no such file"
    if not path.is_file():
        return "not a file"
    return None


def numbered_checked(
    path: str | Path, kind: RecordKind, *, allow_empty: bool = False
) -> list[tuple[int, dict]]:
    """(line number, record) of every record of a JSONL file, each checked against `kind`.

    The first problem is an `LmmixupError` of one line: the file and line, the field, and
    the kind's hint. An empty file is one unless `allow_empty`; a kind that `needs_rating`
    also refuses a file in which no record has a rating.
    """
    path = Path(path)
    problem = _open_problem(path)
    if problem is not None:
        raise LmmixupError(f"{path}: {problem}; {kind.hint}")
    claimed: dict[str, dict[str, int]] = {unique.label: {} for unique in kind.unique}
    records = []
    for line in iter_jsonl(path):
        problem = _record_problem(line, kind)
        if problem is not None:
            raise LmmixupError(f"{path}:{line.number}: {problem}; {kind.hint}")
        for unique in kind.unique:
            _claim(claimed[unique.label], unique, line.value, path, line.number)
        records.append((line.number, line.value))
    if not records and not allow_empty:
        raise LmmixupError(f"{path} holds no records; {kind.hint}")
    if records and kind.needs_rating and all(r["rating"] is None for _, r in records):
        raise LmmixupError(f"no row of {path} has a rating; run `lmmixup rate` first")
    return records


def _claim(seen: dict[str, int], unique: Unique, record: dict, path: Path, number: int) -> None:
    """Note the values a record claims; an error naming both lines on a repeat."""
    here: set[str] = set()
    for value in unique.values(record):
        first = seen.setdefault(value, number)
        if first != number or value in here:
            where = "earlier on this line" if first == number else f"on line {first}"
            raise LmmixupError(
                f"{path}:{number}: {unique.label} {value!r} already appears {where}; {unique.rule}"
            )
        here.add(value)


def read_checked(path: str | Path, kind: RecordKind, *, allow_empty: bool = False) -> list[dict]:
    """The records of a JSONL file, each checked against `kind` (see `numbered_checked`)."""
    return [record for _, record in numbered_checked(path, kind, allow_empty=allow_empty)]


def check_file(path: str | Path, kind: RecordKind, *, allow_empty: bool = False) -> None:
    """Check an input file whole before a stage starts (see `numbered_checked`)."""
    numbered_checked(path, kind, allow_empty=allow_empty)
