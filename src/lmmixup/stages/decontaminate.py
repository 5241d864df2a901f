"""Decontamination: word n-gram overlap between training rows and evaluation texts.

Texts are compared as sequences of normalised words: casefolded and split on everything that is
not a letter or a digit, so casing, punctuation and spacing never hide a copy. A training row
(its prompt and completion read as one sequence) is contaminated for a task when it contains
one of the n-grams (n = 13 by default) of any of the task's evaluation texts.

Short texts: an evaluation text of k words with `min_words` <= k < n is matched whole, as one
k-gram: the row is contaminated when it holds those k words consecutively (word-aligned, so
"cat" never matches inside "category"). Texts of fewer than `min_words` words (or fewer than n,
when n is smaller) are too generic to prove a copy; they are skipped and counted.

An index is a set of hashes of n-grams (Python's hash of the word tuple, stable within a run).
A row is checked by hashing its own n-grams and intersecting sets, so the cost grows with the
total number of words, never with rows x texts. Short texts are also indexed by their first
`min_words` words, so a row hashes its windows of the short lengths only where such a prefix
occurs, instead of one pass per length.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmmixup.errors import LmmixupError
from lmmixup.io.jsonl import iter_jsonl
from lmmixup.progress import progress

DEFAULT_N = 13
MIN_WORDS = 6
EXAMPLE_IDS = 5
EVAL_FIELDS = ("question", "prompt", "answer", "completion", "text")
CONTAMINATED = "contaminated"

_WORD = re.compile(r"[^\W_]+")  # runs of letters and digits


def words(text: str) -> list[str]:
    """The normalised words of a text: casefolded runs of letters and digits."""
    return _WORD.findall(text.casefold())


def _grams(tokens: Sequence[str], length: int) -> Iterator[tuple[str, ...]]:
    """The word tuples of every window of `length` words, in order (built by zip, in C)."""
    return zip(*(tokens[i:] for i in range(length)), strict=False)


@dataclass(frozen=True)
class NgramIndex:
    """Hashed n-grams of a set of texts, and of each short text as a whole.

    `lengths` are n and the word counts of the short texts; `prefixes` hash the first
    `prefix_words` words of every short text.
    """

    n: int
    prefix_words: int
    hashes: frozenset[int]
    lengths: frozenset[int]
    prefixes: frozenset[int]
    texts: int
    too_short: int


def ngram_index(texts: Iterable[str], n: int = DEFAULT_N, min_words: int = MIN_WORDS) -> NgramIndex:
    """Index every n-gram of the texts; a shorter text (at least `min_words` words) as a whole."""
    if n < 1 or min_words < 1:
        raise LmmixupError(f"n-gram length and min_words must be at least 1, got {n}, {min_words}")
    shortest = min(n, min_words)
    hashes: set[int] = set()
    lengths: set[int] = set()
    prefixes: set[int] = set()
    count = too_short = 0
    for text in texts:
        count += 1
        tokens = words(text)
        if len(tokens) < shortest:
            too_short += 1
            continue
        length = min(n, len(tokens))
        lengths.add(length)
        hashes.update(map(hash, _grams(tokens, length)))
        if length < n:
            prefixes.add(hash(tuple(tokens[:shortest])))
    return NgramIndex(
        n, shortest, frozenset(hashes), frozenset(lengths), frozenset(prefixes), count, too_short
    )


def row_words(row: Mapping[str, Any]) -> list[str]:
    """The words of a training row: its prompt followed by its completion."""
    return words(row.get("prompt") or "") + words(row.get("completion") or "")


@dataclass
class TaskContamination:
    """One task's evaluation texts and the training rows that overlap them."""

    eval_texts: int
    too_short: int
    contaminated_rows: int = 0
    example_ids: list[Any] = field(default_factory=list)


@dataclass
class ContaminationReport:
    """Which rows overlap which task: `matches` maps a row's position to {task: matched n-gram}."""

    n: int
    rows: int
    tasks: dict[str, TaskContamination]
    matches: dict[int, dict[str, str]]

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready counts (no per-row matches)."""
        return {
            "n": self.n,
            "rows": self.rows,
            "contaminated_rows": len(self.matches),
            "tasks": {name: vars(task) for name, task in self.tasks.items()},
        }

    def lines(self) -> list[str]:
        """A human summary: one line overall, then one per task."""
        out = [
            f"{len(self.matches):,} of {self.rows:,} rows share a {self.n}-gram with the evaluation data"
        ]
        for name, task in self.tasks.items():
            examples = ", ".join(map(str, task.example_ids))
            out.append(
                f"  {name}: {task.contaminated_rows:,} rows ({task.eval_texts:,} texts, "
                f"{task.too_short:,} too short to check)"
                + (f"; e.g. {examples}" if examples else "")
            )
        return out


def find_contaminated(
    rows: Sequence[Mapping[str, Any]],
    eval_sets: Mapping[str, Iterable[str]],
    n: int = DEFAULT_N,
    min_words: int = MIN_WORDS,
) -> ContaminationReport:
    """Check every row against every task's evaluation texts; per task, count the rows that
    overlap and keep a few of their ids (a row without `id` is named by its position)."""
    indexes = {task: ngram_index(texts, n, min_words) for task, texts in eval_sets.items()}
    combined = _combined(indexes.values(), n, min_words)
    tasks = {
        name: TaskContamination(index.texts, index.too_short) for name, index in indexes.items()
    }
    matches: dict[int, dict[str, str]] = {}
    with progress("decontaminate", total=len(rows), unit="row") as advance:
        for position, row in enumerate(rows):
            advance()
            found = _row_matches(row_words(row), combined, indexes)
            if not found:
                continue
            matches[position] = found
            for name in found:
                task = tasks[name]
                task.contaminated_rows += 1
                if len(task.example_ids) < EXAMPLE_IDS:
                    task.example_ids.append(row.get("id", position))
    return ContaminationReport(n, len(rows), tasks, matches)


def _combined(indexes: Iterable[NgramIndex], n: int, min_words: int) -> NgramIndex:
    """The lengths and short-text prefixes of all indexes together (no hashes: rows only need
    these to know which windows to hash)."""
    indexes = list(indexes)
    lengths = frozenset().union(*(index.lengths for index in indexes))
    prefixes = frozenset().union(*(index.prefixes for index in indexes))
    return NgramIndex(n, min(n, min_words), frozenset(), lengths, prefixes, 0, 0)


def _row_hashes(tokens: list[str], combined: NgramIndex) -> set[int]:
    """Hashes of the row's n-grams, plus of its windows of each short length that start where
    the prefix of a short text occurs."""
    hashes = set(map(hash, _grams(tokens, combined.n)))
    width = combined.prefix_words
    if not combined.prefixes.intersection(map(hash, _grams(tokens, width))):
        return hashes
    short = [length for length in combined.lengths if length < combined.n]
    for start, gram in enumerate(_grams(tokens, width)):
        if hash(gram) in combined.prefixes:
            hashes.update(
                hash(tuple(tokens[start : start + length]))
                for length in short
                if start + length <= len(tokens)
            )
    return hashes


def _row_matches(
    tokens: list[str], combined: NgramIndex, indexes: Mapping[str, NgramIndex]
) -> dict[str, str]:
    """{task: the row's earliest n-gram found in that task's index}."""
    hashes = _row_hashes(tokens, combined)
    found = {}
    for name, index in indexes.items():
        common = index.hashes.intersection(hashes)
        if common:  # rare: find which words matched, earliest first
            found[name] = min(
                (start, " ".join(gram))
                for length in combined.lengths
                for start, gram in enumerate(_grams(tokens, length))
                if hash(gram) in common
            )[1]
    return found


def split_contaminated(
    rows: Sequence[dict], report: ContaminationReport
) -> tuple[list[dict], list[dict]]:
    """(kept, dropped): a dropped row is the row plus `reason`, the `tasks` it overlaps and one
    matched `ngram`."""
    kept, dropped = [], []
    for position, row in enumerate(rows):
        found = report.matches.get(position)
        if found is None:
            kept.append(row)
            continue
        tasks = sorted(found)
        dropped.append({**row, "reason": CONTAMINATED, "tasks": tasks, "ngram": found[tasks[0]]})
    return kept, dropped


def decontaminate(
    rows: Sequence[dict],
    eval_sets: Mapping[str, Iterable[str]],
    n: int = DEFAULT_N,
    min_words: int = MIN_WORDS,
) -> tuple[list[dict], list[dict], ContaminationReport]:
    """Find the contaminated rows and split them off: (kept, dropped, report)."""
    report = find_contaminated(rows, eval_sets, n, min_words)
    kept, dropped = split_contaminated(rows, report)
    return kept, dropped, report


def read_eval_texts(path: str | Path) -> list[str]:
    """The texts of an evaluation JSONL file: every string among a line's `question`, `prompt`,
    `answer`, `completion` and `text` fields, each a text of its own."""
    texts = []
    for line in iter_jsonl(path):
        if line.error is not None or not isinstance(line.value, dict):
            raise LmmixupError(f"{path}:{line.number}: {line.error or 'not a JSON object'}")
        found = [line.value[key] for key in EVAL_FIELDS if isinstance(line.value.get(key), str)]
        if not found:
            raise LmmixupError(
                f"{path}:{line.number}: no text field (expected one of {', '.join(EVAL_FIELDS)})"
            )
        texts.extend(found)
    return texts


def read_eval_sets(files: Mapping[str, str | Path]) -> dict[str, list[str]]:
    """{task: texts} from {task: evaluation JSONL file}."""
    for name, path in files.items():
        if not Path(path).is_file():
            raise LmmixupError(f"evaluation file for {name!r} not found: {path}")
    return {name: read_eval_texts(path) for name, path in files.items()}
