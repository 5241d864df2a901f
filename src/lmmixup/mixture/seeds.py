"""Seeds: the high-quality records targets are written from, read and filtered.

Seeds are imported like a pool and filtered by length; a seed that carries a rating needs
`score >= min_score`. Other prose seeds must look finished, mostly Latin-script text and
(unless `allow_code`) no code. A GSM8K-style seed (completion ending in a `#### N` line) keeps
its worked solution (calculator notes removed) and its final answer.
"""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lmmixup.config import ImportConfig
from lmmixup.io.jsonl import read_records
from lmmixup.method.reply import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN
from lmmixup.mixture.config import MixtureConfig
from lmmixup.mixture.degrade import sentences
from lmmixup.stages.import_pool import import_pool

_CATEGORY_KEYS = ("category", "topic", "subject")
_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
_WORKED = re.compile(r"^(?P<steps>.+?)\n####\s*(?P<final>[^\n]+?)\s*$", re.DOTALL)
_CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")
_CODE_LINE = re.compile(
    r"^\s*(?:def |class |import |from \S+ import |#include|function\b|public |SELECT |<[a-z]+[ >])",
    re.MULTILINE,
)
_MARKUP_LINE = re.compile(r"^\s*(?:[-*•+]\s|\d+[.)]\s|#|\|)", re.MULTILINE)
_FINISHED_END = ".!?)\"'”’*"


@dataclass(frozen=True)
class Seed:
    """A high-quality pool record, with its worked solution and final answer when it has them."""

    id: str
    prompt: str
    completion: str
    steps: str | None = None
    final: str | None = None
    category: str | None = None


def looks_like_code(text: str) -> bool:
    """Fenced blocks, lines that start like code, or many braces and semicolons."""
    braces = sum(text.count(char) for char in "{};")
    return "```" in text or _CODE_LINE.search(text) is not None or braces > 0.02 * len(text)


def is_prose(text: str) -> bool:
    """Plain sentences: no code, list items, headings or tables, and three sentences or more."""
    return (
        not looks_like_code(text)
        and _MARKUP_LINE.search(text) is None
        and len(sentences(text)) >= 3
    )


def _rating_problem(meta: dict, min_score: int) -> str | None:
    """Why a seed's rating rules it out ('unrated' for a failed rating), None when it does not."""
    if "rating" not in meta:
        return None
    rating = meta["rating"]
    if not isinstance(rating, dict) or rating.get("score") is None:
        return "unrated"
    return "low_rating" if rating["score"] < min_score else None


def _prose_problem(prompt: str, completion: str, allow_code: bool) -> str | None:
    """Why a free-text seed is not a good target, None when it is."""
    text = f"{prompt}\n{completion}"
    if sum(char.isascii() for char in text) < 0.95 * len(text):
        return "non_latin"
    if not allow_code and looks_like_code(text):
        return "code"
    last = completion.rstrip()[-1:]
    if not (last in _FINISHED_END or last.isdigit()):
        return "unfinished"
    if completion.lstrip()[:1].islower():
        return "fragment"
    return None


def _category(meta: dict) -> str | None:
    """The first non-blank category, topic or subject in a record's meta."""
    for key in _CATEGORY_KEYS:
        value = meta.get(key)
        if isinstance(value, str) and value.strip():
            return " ".join(value.split())
    return None


def to_seed(record: dict, cfg: MixtureConfig) -> Seed | str:
    """A pool record as a Seed, or the reason it cannot be one."""
    prompt, completion = record["prompt"].strip(), record["completion"].strip()
    meta = record.get("meta") or {}
    problem = _rating_problem(meta, cfg.min_score)
    if problem is None and any(tag in prompt + completion for tag in _TAGS):
        problem = "contains_tags"
    worked = _WORKED.match(completion)
    if problem is None and worked is None:
        problem = _prose_problem(prompt, completion, cfg.allow_code)
    if problem is not None:
        return problem
    if worked is None:
        return Seed(record["id"], prompt, completion, category=_category(meta))
    steps = _CALCULATOR_NOTE.sub("", worked["steps"]).strip()
    final = worked["final"].replace(",", "").strip()
    return Seed(record["id"], prompt, completion, steps, final, _category(meta))


@dataclass
class SeedReport:
    """What happened to the seed records: read, rejected, filtered, dropped (by reason), used."""

    sources: list[str]
    imported: int = 0
    rejected: int = 0
    filtered_by_length: int = 0
    dropped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        """The counts as the card writes them."""
        return {
            "sources": self.sources,
            "imported": self.imported,
            "rejected_rows": self.rejected,
            "filtered_by_length": self.filtered_by_length,
            "dropped": dict(sorted(self.dropped.items())),
        }


def load_seeds(cfg: MixtureConfig, rejects: Path) -> tuple[list[Seed], SeedReport]:
    """The configured seeds, imported (length filters, per-source samples) and filtered; rows
    that cannot be read go to `rejects` with their file, line and reason."""
    import_cfg = ImportConfig(
        min_prompt_chars=cfg.min_prompt_chars,
        max_prompt_chars=cfg.max_prompt_chars,
        min_completion_chars=cfg.min_completion_chars,
        max_completion_chars=cfg.max_completion_chars,
        seed=cfg.seed,
    )
    report = SeedReport([spec.path for spec in cfg.seeds])
    with tempfile.TemporaryDirectory(prefix="lmmixup-seeds-") as tmp:
        pool = Path(tmp) / "seeds.jsonl"
        result = import_pool(list(cfg.seeds), pool, import_cfg, rejects)
        records = read_records(pool)
    report.imported, report.rejected = result.kept, result.rejected
    report.filtered_by_length = result.filtered + result.dropped_by_limit
    seeds = []
    for record in records:
        seed = to_seed(record, cfg)
        if isinstance(seed, str):
            report.dropped[seed] += 1
        else:
            seeds.append(seed)
    return seeds, report
