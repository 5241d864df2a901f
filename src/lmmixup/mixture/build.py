"""Stage 6: MIXTURE-style training data for the distiller (clusters of degraded variants -> target).

Each record pairs one high-quality target, written in its task type's `<answer>` layout, with a
cluster of 2-20 low-quality variants of it (the `members`), shuffled. Built from seed pool
records (any pool file, or the built-in `gsm8k` and `sharegpt`):

1. Seeds: imported like a pool, filtered by length; a seed that carries a rating needs
   `score >= min_score`. Other prose seeds must look finished, mostly Latin-script text and
   (unless `allow_code`) no code.
2. Cross-topic merges first: a seeded sample of seeds is embedded, each paired with its
   nearest unpaired neighbour (cosine at least `cross_topic_min_similarity`), and the two
   become ONE qa target numbered `1.` / `2.`; its members are variants of both, about half
   each. About `cross_topic_fraction` of the records are merges.
3. Every other seed gets one task type among those it supports, drawn by `task_weights`:
   - qa: any seed. A GSM8K-style seed (completion ending in a `#### N` line) answers
     `The answer is N.` and, with `cot`, its worked solution (calculator notes removed)
     becomes the `think`; without `cot` the solution is part of the answer.
   - mcq / tfq: GSM8K-style seeds with a numeric answer. Distractors are the answer moved by
     small offsets, doubled, halved or times ten. tfq states the right answer or a
     distractor, then the problem; the labels alternate True/False in the shuffled order,
     so they balance.
     Their `think` (with `cot`) is the worked solution plus one generated sentence naming
     the right option or label.
   - paragraph: prose completions (no code, lists, headings or tables, three sentences or
     more); the answer is the completion as one paragraph.
   - cs: prose seeds whose `meta` has a `category`, `topic` or `subject`: `C:` that value,
     `S:` the paragraph. The built-in seeds have none, so they give no cs records.
   Every target is checked against its layout (`tasks.task_parts` must find exactly its
   parts); one that does not parse back (e.g. a question containing `A:`) is left out.
   Targets other than GSM8K-style ones have no `think` (we do not invent reasoning).
4. Members: the target's clean (prompt, completion) pair degraded by 1-3 rule-based
   operators (`lmmixup.mixture.degrade`; the completion always changes, so no member carries the
   target's content intact), or, with a `degrader` model, rewritten by it for a fraction
   of the variants. A model reply that fails (error, no `Q:`/`A:` pair, unchanged)
   is counted in the card and replaced by a rule-based variant.
5. Splits by record, stratified by task type: `sft_fraction` for SFT, the rest for GRPO,
   of which `grpo_test_fraction` is held out. A seed is in exactly one record, so no target
   is in two splits. Everything is seeded: the same seed and inputs give identical files.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from lmmixup.backends.base import Generator, GenParams, RequestBudgetExhausted
from lmmixup.config import (
    DEFAULT_EMBEDDER,
    BackendConfig,
    ImportConfig,
    Section,
    SourceSpec,
)
from lmmixup.hashing import hash_value
from lmmixup.io.jsonl import write_records
from lmmixup.method.reply import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN
from lmmixup.method.tasks import task_parts
from lmmixup.mixture.degrade import (
    LLM_OPERATOR,
    OPERATORS,
    Variant,
    degrade_pair,
    llm_degrade_messages,
    parse_llm_degradation,
    sentences,
)
from lmmixup.progress import progress
from lmmixup.records import TASK_TYPES
from lmmixup.types import Embedder

log = logging.getLogger(__name__)

TaskType = Literal["qa", "mcq", "tfq", "cs", "paragraph"]
SPLITS = ("sft", "grpo_train", "grpo_test")
REJECTS_FILE = "rejects.jsonl"  # seed rows that could not be read, beside the splits
LEXICAL = "lexical"
"""Embedder name for hashed bag-of-words vectors: no model, for tests and `--no-embed`."""

_EMBED_CHARS = 128
_NEIGHBOURS = 10
_DUPLICATE_RETRIES = 4
_CATEGORY_KEYS = ("category", "topic", "subject")
_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
_WORKED = re.compile(r"^(?P<steps>.+?)\n####\s*(?P<final>[^\n]+?)\s*$", re.DOTALL)
_CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")
_NUMERIC = re.compile(r"^-?\d+(?:\.\d+)?$")
_CODE_LINE = re.compile(
    r"^\s*(?:def |class |import |from \S+ import |#include|function\b|public |SELECT |<[a-z]+[ >])",
    re.MULTILINE,
)
_MARKUP_LINE = re.compile(r"^\s*(?:[-*•+]\s|\d+[.)]\s|#|\|)", re.MULTILINE)
_FINISHED_END = ".!?)\"'”’*"
_DISTRACTOR_OFFSETS = (1, 2, 3, 5, 10)


# ---------------------------------------------------------------------------- config


def _default_seeds() -> list[SourceSpec]:
    return [SourceSpec(path="gsm8k"), SourceSpec(path="sharegpt")]


class MixtureConfig(Section):
    """How `lmmixup mixture build` makes the distiller's training data."""

    seeds: list[SourceSpec] = Field(
        default_factory=_default_seeds,
        description="High-quality seed samples: pool files or built-in sources (gsm8k, sharegpt), each with an optional sample size.",
    )
    min_prompt_chars: int = Field(10, ge=0, description="Drop seeds whose prompt is shorter.")
    max_prompt_chars: int = Field(800, ge=1, description="Drop seeds whose prompt is longer.")
    min_completion_chars: int = Field(
        20, ge=0, description="Drop seeds whose completion is shorter."
    )
    max_completion_chars: int = Field(
        1500, ge=1, description="Drop seeds whose completion is longer."
    )
    min_score: int = Field(
        4,
        ge=0,
        le=5,
        description="A seed that carries a rating (meta.rating) needs at least this compressed score; a failed rating drops it; unrated seeds are taken as high quality.",
    )
    allow_code: bool = Field(
        False, description="Keep seeds that look like code (fenced blocks, code lines)."
    )
    task_weights: dict[TaskType, float] = Field(
        default_factory=lambda: dict.fromkeys(TASK_TYPES, 1.0),
        description="Relative chance of each task type among those a seed supports (0 or absent = never).",
    )
    task_quotas: dict[TaskType, int] = Field(
        default_factory=dict,
        description="Most records of a task type (merged records count as qa); absent = no limit.",
    )
    cot: bool = Field(
        True,
        description="Put GSM8K-style worked solutions in `think` (the answer then states only the result); false: the solution stays in the answer and the think is a short note on the merge.",
    )
    min_size: int = Field(2, ge=2, description="Fewest variants in a cluster.")
    max_size: int = Field(20, ge=2, description="Most variants in a cluster.")
    mean_size: float = Field(
        6.0, gt=0, description="Mean of the normal distribution cluster sizes are drawn from."
    )
    std_size: float = Field(3.0, ge=0, description="Its standard deviation.")
    cross_topic_fraction: float = Field(
        0.15,
        ge=0,
        lt=1,
        description="Fraction of records that merge two similar seeds into one qa target.",
    )
    cross_topic_pool: float = Field(
        1.5,
        ge=1,
        description="Nearest neighbours are searched among this many sampled seeds per merged seed (more = closer pairs, more embedding time).",
    )
    cross_topic_min_similarity: float = Field(
        0.3,
        ge=-1,
        le=1,
        description="Merge two seeds only when the cosine similarity of their embeddings is at least this.",
    )
    embedder: str = Field(
        DEFAULT_EMBEDDER,
        description=f"Sentence embedder that finds similar seeds; '{LEXICAL}' = hashed word counts, no model.",
    )
    operators: list[str] = Field(
        default_factory=lambda: list(OPERATORS),
        description=f"Rule-based degradation operators to use: {', '.join(OPERATORS)}.",
    )
    max_operators: int = Field(
        3, ge=1, le=3, description="Each rule-based variant applies 1 to this many operators."
    )
    degrader: BackendConfig | None = Field(
        None, description="A model that writes degraded variants too; null = rule-based only."
    )
    llm_fraction: float = Field(
        0.5, ge=0, le=1, description="With a degrader: share of the variants it writes."
    )
    llm_max_new_tokens: int = Field(
        400, ge=16, description="With a degrader: tokens it may write per variant."
    )
    llm_temperature: float = Field(
        0.8, ge=0, description="With a degrader: sampling temperature (0 = greedy)."
    )
    llm_prefix: str = Field(
        "",
        description="With a degrader: text its reply is pre-filled with; 'Q:' steers small local models into the Q:/A: form (hf backend, vLLM servers).",
    )
    sft_fraction: float = Field(
        0.3, gt=0, lt=1, description="Share of records for SFT cold start; the rest is GRPO."
    )
    grpo_test_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of the GRPO records held out as its test split."
    )
    max_examples: int | None = Field(
        None, ge=1, description="Build at most this many records (null = from all seeds)."
    )
    seed: int = Field(0, description="Seed for every random choice.")

    @field_validator("operators")
    @classmethod
    def _known_operators(cls, names: list[str]) -> list[str]:
        unknown = [name for name in names if name not in OPERATORS]
        if unknown or not names:
            raise ValueError(
                f"operators must be a non-empty list of {', '.join(OPERATORS)}; unknown: {unknown}"
            )
        return names

    @model_validator(mode="after")
    def _consistent(self) -> MixtureConfig:
        if self.min_size > self.max_size:
            raise ValueError(
                f"min_size ({self.min_size}) is larger than max_size ({self.max_size})"
            )
        if self.min_completion_chars > self.max_completion_chars:
            raise ValueError("min_completion_chars is larger than max_completion_chars")
        if self.min_prompt_chars > self.max_prompt_chars:
            raise ValueError("min_prompt_chars is larger than max_prompt_chars")
        return self

    def split_fractions(self) -> dict[str, float]:
        """Each split's share of all records."""
        grpo = 1 - self.sft_fraction
        return {
            "sft": self.sft_fraction,
            "grpo_train": grpo * (1 - self.grpo_test_fraction),
            "grpo_test": grpo * self.grpo_test_fraction,
        }


# ---------------------------------------------------------------------------- seeds


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
    from lmmixup.io.jsonl import read_records
    from lmmixup.stages.import_pool import import_pool

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


# ---------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """A task-type answer, its optional think, and the clean pair its variants degrade."""

    task_type: str
    answer: str
    think: str | None
    prompt: str
    completion: str


def _checked(target: Target, **expected: str) -> Target | None:
    """The target if its answer parses back into exactly the expected layout parts, else None."""
    parts = task_parts(target.answer, target.task_type)
    return target if parts == {name: text.strip() for name, text in expected.items()} else None


def _paragraph(text: str) -> str:
    """The text as one paragraph (runs of whitespace become one space)."""
    return " ".join(text.split())


def _worked(seed: Seed) -> str:
    """A GSM8K-style seed's clean solution with its `#### N` line."""
    return f"{seed.steps}\n#### {seed.final}"


def qa_target(seed: Seed, cot: bool) -> Target | None:
    """`Q:` the prompt, `A:` the completion (GSM8K-style: the result, the solution as think)."""
    if seed.final is None:
        answer = f"Q: {seed.prompt}\nA: {seed.completion}"
        target = Target("qa", answer, None, seed.prompt, seed.completion)
        return _checked(target, prompt=seed.prompt, completion=seed.completion)
    result = f"The answer is {seed.final}."
    reply = result if cot else f"{seed.steps}\n{result}"
    think = seed.steps if cot else None
    target = Target("qa", f"Q: {seed.prompt}\nA: {reply}", think, seed.prompt, _worked(seed))
    return _checked(target, prompt=seed.prompt, completion=reply)


def as_number(text: str) -> Decimal | None:
    """The number a final answer states (`18`, `-3`, `0.5`), None when it is not one."""
    return Decimal(text) if _NUMERIC.match(text) else None


def format_number(value: Decimal) -> str:
    """A number without a needless decimal part (`36`, not `36.0`)."""
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def distractors(final: str, rng: random.Random, count: int = 3) -> list[str]:
    """`count` wrong answers near a numeric answer: small offsets, doubled, halved, times ten.

    They are distinct, differ from the answer, keep its sign and, for a whole number, are
    whole numbers.
    """
    value = as_number(final)
    if value is None:
        raise ValueError(f"not a number: {final!r}")
    candidates = [value + offset for offset in _DISTRACTOR_OFFSETS]
    candidates += [value - offset for offset in _DISTRACTOR_OFFSETS]
    candidates += [value * 2, value / 2, value * 10, value * 3]
    whole = value == value.to_integral_value()
    right = format_number(value)
    options = {
        format_number(c): None
        for c in candidates
        if (c >= 0 or value < 0) and (not whole or c == c.to_integral_value())
    }
    options.pop(right, None)
    return rng.sample(list(options), count)


def mcq_target(seed: Seed, rng: random.Random, cot: bool) -> Target | None:
    """Four options (the answer once, three distractors) in random order; `Answer:` its letter."""
    options = [*distractors(seed.final, rng), format_number(as_number(seed.final))]
    rng.shuffle(options)
    letter = "ABCD"[options.index(format_number(as_number(seed.final)))]
    lines = "\n".join(f"{label}) {option}" for label, option in zip("ABCD", options, strict=True))
    question = f"{seed.prompt}\n{lines}"
    think = f"{seed.steps}\nThe answer is {seed.final}: option {letter}." if cot else None
    completion = f"{_worked(seed)}\nAnswer: {letter}"
    target = Target("mcq", f"Q: {question}\nAnswer: {letter}", think, question, completion)
    return _checked(target, prompt=question, completion=letter)


def tfq_target(seed: Seed, rng: random.Random, label: bool, cot: bool) -> Target | None:
    """A stated answer (right when `label`, else a distractor), then the problem; True/False.

    The statement does not end in `The answer is N.`, the sentence that closes GSM8K-style
    qa answers (docs/BENCHMARKS.md: this alone did not teach the SmolLM2 recipe the verdict).
    """
    shown = seed.final if label else distractors(seed.final, rng, 1)[0]
    statement = f"The answer to this problem is {shown}: {seed.prompt}"
    verdict = str(label)
    think = (
        f"{seed.steps}\nThe answer is {seed.final}, so the statement is {verdict.lower()}."
        if cot
        else None
    )
    completion = f"{_worked(seed)}\nSo the statement is {verdict}."
    target = Target(
        "tfq",
        f"Statement: {statement}\nAnswer: {verdict}",
        think,
        f"True or false? {statement}",
        completion,
    )
    return _checked(target, prompt=statement, completion=verdict)


def paragraph_target(seed: Seed) -> Target | None:
    """The completion as one paragraph."""
    text = _paragraph(seed.completion)
    return _checked(Target("paragraph", text, None, seed.prompt, text), text=text)


def cs_target(seed: Seed) -> Target | None:
    """`C:` the seed's category, `S:` its completion as one paragraph."""
    text = _paragraph(seed.completion)
    target = Target("cs", f"C: {seed.category}\nS: {text}", None, seed.prompt, text)
    return _checked(target, prompt=seed.category or "", completion=text)


def supported_tasks(seed: Seed) -> list[str]:
    """The task types a seed can be written as (see the module doc)."""
    if seed.final is not None:
        return ["qa", "mcq", "tfq"] if as_number(seed.final) is not None else ["qa"]
    if not is_prose(seed.completion):
        return ["qa"]
    return ["qa", "paragraph", "cs"] if seed.category else ["qa", "paragraph"]


def build_target(
    seed: Seed, task_type: str, rng: random.Random, cfg: MixtureConfig, label: bool
) -> Target | None:
    """The seed written as `task_type` (`label` is a tfq's truth); None if the layout fails."""
    if task_type == "mcq":
        return mcq_target(seed, rng, cfg.cot)
    if task_type == "tfq":
        return tfq_target(seed, rng, label, cfg.cot)
    if task_type == "paragraph":
        return paragraph_target(seed)
    if task_type == "cs":
        return cs_target(seed)
    return qa_target(seed, cfg.cot)


def merge_targets(first: Target, second: Target) -> Target | None:
    """Two qa targets as one: questions and answers numbered 1. and 2.; thinks likewise.

    The merged target has no pair of its own: its members are variants of the two targets.
    """
    one, two = task_parts(first.answer, "qa"), task_parts(second.answer, "qa")
    question = f"1. {one['prompt']}\n2. {two['prompt']}"
    reply = f"1. {one['completion']}\n2. {two['completion']}"
    thinks = [f"{n}. {t.think}" for n, t in enumerate((first, second), 1) if t.think]
    merged = Target("qa", f"Q: {question}\nA: {reply}", "\n".join(thinks) or None, "", "")
    return _checked(merged, prompt=question, completion=reply)


# ---------------------------------------------------------------------------- similar seeds


class LexicalEmbedder:
    """Unit vectors of hashed counts of words of four letters or more: no model to load."""

    name = LEXICAL

    def __init__(self, dim: int = 4096):
        self.dim = dim

    def encode(self, texts: list[str]) -> np.ndarray:
        """One (len(texts), dim) float32 array of unit vectors (zero rows for wordless texts)."""
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z]{4,}", text.lower()):
                vectors[row, zlib.crc32(word.encode()) % self.dim] += 1.0
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)


def load_pair_embedder(name: str) -> Embedder:
    """The embedder named in the config (`lexical` or any sentence-transformers model)."""
    if name == LEXICAL:
        return LexicalEmbedder()
    from lmmixup.backends.embed import load_embedder

    return load_embedder(name)


def nearest_neighbours(vectors: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """For each row, the indices of its `k` most similar other rows, most similar first."""
    n = len(vectors)
    k = min(k, n - 1)
    result = np.zeros((n, k), dtype=np.int64)
    for start in range(0, n, block):
        sims = vectors[start : start + block] @ vectors.T
        rows = np.arange(len(sims))
        sims[rows, rows + start] = -np.inf
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        result[start : start + block] = np.take_along_axis(top, order, axis=1)
    return result


def similar_pairs(
    seeds: Sequence[Seed],
    count: int,
    embedder: Embedder,
    rng: random.Random,
    *,
    pool_factor: float,
    min_similarity: float,
) -> list[tuple[int, int, float]]:
    """Up to `count` disjoint pairs of seed indices (with their cosine similarity).

    A seeded sample of `count * 2 * pool_factor` seeds is embedded by the start of their
    prompts (what a seed is about; shorter texts embed faster). Visited in a seeded random
    order, each unpaired seed is paired with its nearest unpaired neighbour among its ten
    nearest, when their similarity reaches `min_similarity`.
    """
    size = min(len(seeds), math.ceil(count * 2 * pool_factor))
    if count == 0 or size < 2:
        return []
    pool = sorted(rng.sample(range(len(seeds)), size))
    texts = [seeds[i].prompt[:_EMBED_CHARS] for i in pool]
    vectors = np.asarray(embedder.encode(texts), dtype=np.float32)
    neighbours = nearest_neighbours(vectors, _NEIGHBOURS)
    taken: set[int] = set()
    pairs: list[tuple[int, int, float]] = []
    for a in rng.sample(range(size), size):
        if len(pairs) == count:
            break
        if a in taken:
            continue
        free = (int(b) for b in neighbours[a] if b not in taken)
        partner = next(free, None)
        similarity = -1.0 if partner is None else float(vectors[a] @ vectors[partner])
        if similarity >= min_similarity:
            taken |= {a, partner}
            pairs.append((pool[a], pool[partner], similarity))
    return pairs


# ---------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class Plan:
    """One record before its members exist: the target(s), the merged answer, the cluster size."""

    id: str
    task_type: str
    answer: str
    think: str | None
    sources: tuple[Target, ...]
    target_ids: tuple[str, ...]
    size: int

    @property
    def cross_topic(self) -> bool:
        return len(self.sources) > 1


def record_id(task_type: str, target_ids: Sequence[str]) -> str:
    """A stable record id from its task type and target ids."""
    return "mx-" + hash_value([task_type, list(target_ids)])[:12]


def draw_size(rng: random.Random, cfg: MixtureConfig) -> int:
    """A cluster size: round(Normal(mean, std)) clipped to [min_size, max_size]."""
    return min(cfg.max_size, max(cfg.min_size, round(rng.gauss(cfg.mean_size, cfg.std_size))))


def _plan(targets: Sequence[Target], ids: Sequence[str], merged: Target, size: int) -> Plan:
    return Plan(
        record_id(merged.task_type, ids),
        merged.task_type,
        merged.answer,
        merged.think,
        tuple(targets),
        tuple(ids),
        size,
    )


@dataclass
class PlanReport:
    """Seeds that made no record, by reason, and the similarity of each merged pair."""

    skipped: Counter = field(default_factory=Counter)
    similarities: list[float] = field(default_factory=list)


def merged_plans(
    seeds: Sequence[Seed],
    cfg: MixtureConfig,
    embedder: Embedder | None,
    rng: random.Random,
    report: PlanReport,
) -> tuple[list[Plan], set[int]]:
    """The cross-topic plans and the indices of the seeds they use."""
    count = min(
        len(seeds) // 2,
        round(cfg.cross_topic_fraction * len(seeds) / (1 + cfg.cross_topic_fraction)),
    )
    count = min(count, cfg.task_quotas.get("qa", count))
    if count == 0 or embedder is None:
        return [], set()
    plans, used = [], set()
    pairs = similar_pairs(
        seeds,
        count,
        embedder,
        rng,
        pool_factor=cfg.cross_topic_pool,
        min_similarity=cfg.cross_topic_min_similarity,
    )
    for a, b, similarity in pairs:
        first, second = qa_target(seeds[a], cfg.cot), qa_target(seeds[b], cfg.cot)
        merged = merge_targets(first, second) if first and second else None
        if merged is None:
            continue
        plans.append(
            _plan((first, second), (seeds[a].id, seeds[b].id), merged, draw_size(rng, cfg))
        )
        used |= {a, b}
        report.similarities.append(similarity)
    return plans, used


def single_plans(
    seeds: Iterable[Seed],
    cfg: MixtureConfig,
    rng: random.Random,
    taken: Counter,
    report: PlanReport,
) -> list[Plan]:
    """One plan per seed, its task type drawn by weight among those it supports and has room for."""
    plans = []
    for seed in seeds:
        options = [
            task
            for task in supported_tasks(seed)
            if cfg.task_weights.get(task, 0) > 0
            and taken[task] < cfg.task_quotas.get(task, math.inf)
        ]
        if not options:
            report.skipped["no_task_type_left"] += 1
            continue
        task = rng.choices(options, weights=[cfg.task_weights[t] for t in options])[0]
        target = build_target(seed, task, rng, cfg, label=taken["tfq"] % 2 == 0)
        if target is None:
            report.skipped[f"layout_{task}"] += 1
            continue
        taken[task] += 1
        plans.append(_plan((target,), (seed.id,), target, draw_size(rng, cfg)))
    return plans


def make_plans(
    seeds: Sequence[Seed], cfg: MixtureConfig, embedder: Embedder | None
) -> tuple[list[Plan], PlanReport]:
    """Every record's plan, in a seeded random order, at most `max_examples` of them."""
    rng = random.Random(cfg.seed)
    order = rng.sample(list(seeds), len(seeds))
    report = PlanReport()
    if cfg.max_examples is not None:
        wanted = math.ceil(cfg.max_examples * (1 + cfg.cross_topic_fraction))
        report.skipped["over_max_examples"] += max(0, len(order) - wanted)
        order = order[:wanted]
    merged, used = merged_plans(order, cfg, embedder, rng, report)
    taken = Counter(qa=len(merged))
    singles = single_plans(
        (seed for i, seed in enumerate(order) if i not in used), cfg, rng, taken, report
    )
    plans = merged + singles
    rng.shuffle(plans)
    if cfg.max_examples is not None and len(plans) > cfg.max_examples:
        cut = plans[cfg.max_examples :]
        report.skipped["over_max_examples"] += sum(len(plan.target_ids) for plan in cut)
        plans = plans[: cfg.max_examples]
    return plans, report


# ---------------------------------------------------------------------------- members


@dataclass(frozen=True)
class Slot:
    """One member to make: its record, the target it degrades, its number in the record."""

    plan: Plan
    source: Target
    number: int

    def rng(self, seed: int, purpose: str) -> random.Random:
        """This slot's own random stream for one purpose (independent of the build order)."""
        return random.Random(f"{seed}/{purpose}/{self.plan.id}/{self.number}")


def slots_of(plan: Plan, rng: random.Random) -> list[Slot]:
    """The plan's members to make; a merge takes about half from each target (one at least)."""
    if not plan.cross_topic:
        return [Slot(plan, plan.sources[0], n) for n in range(plan.size)]
    first = plan.size // 2 + (plan.size % 2 if rng.random() < 0.5 else 0)
    sources = [plan.sources[0]] * first + [plan.sources[1]] * (plan.size - first)
    return [Slot(plan, source, n) for n, source in enumerate(sources)]


def rule_variant(slot: Slot, cfg: MixtureConfig, seen: set[tuple[str, str]]) -> Variant | None:
    """A rule-based variant of the slot's target, retried a few times to avoid repeats."""
    rng = slot.rng(cfg.seed, "rules")
    variant = None
    for _ in range(_DUPLICATE_RETRIES):
        attempt = degrade_pair(
            slot.source.prompt, slot.source.completion, rng, cfg.operators, cfg.max_operators
        )
        variant = attempt or variant
        if attempt is not None and (attempt.prompt, attempt.completion) not in seen:
            break
    return variant


@dataclass
class LlmReport:
    """The degrader model's work: variants asked for, written, and failures by reason."""

    model: str
    requested: int = 0
    written: int = 0
    failed: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "requested": self.requested,
            "written": self.written,
            "failed": dict(sorted(self.failed.items())),
            "fell_back_to_rules": sum(self.failed.values()),
        }


def _llm_failure(slot: Slot, generation: Any) -> tuple[tuple[str, str] | None, str | None]:
    """The pair a model reply holds, or why it cannot be used."""
    if generation is None:
        return None, "request_budget_spent"
    if not generation.ok:
        return None, "generation_error"
    pair = parse_llm_degradation(generation.text)
    if pair is None:
        return None, "truncated" if generation.finish_reason == "length" else "unparsable"
    if pair == (slot.source.prompt.strip(), slot.source.completion.strip()):
        return None, "unchanged"
    return pair, None


def llm_variants(
    slots: Sequence[Slot], generator: Generator, cfg: MixtureConfig
) -> tuple[dict[Slot, Variant], LlmReport]:
    """Variants written by the degrader model, by slot; failures are counted, not returned."""
    report = LlmReport(generator.name, requested=len(slots))
    params = GenParams(
        max_new_tokens=cfg.llm_max_new_tokens,
        temperature=cfg.llm_temperature,
        seed=cfg.seed,
        assistant_prefix=cfg.llm_prefix,
    )
    batch = (cfg.degrader or BackendConfig()).batch_size
    written: dict[Slot, Variant] = {}
    budget_spent = False
    with progress("mixture: model degradations", len(slots), unit="variant") as advance:
        for start in range(0, len(slots), batch):
            chunk = slots[start : start + batch]
            if budget_spent:
                generations: list = [None] * len(chunk)
            else:
                prompts = [
                    llm_degrade_messages(s.source.prompt, s.source.completion, s.number)
                    for s in chunk
                ]
                try:
                    generations = generator.generate(prompts, params)
                except RequestBudgetExhausted as exc:
                    generations, budget_spent = exc.results, True
            for slot, generation in zip(chunk, generations, strict=True):
                pair, reason = _llm_failure(slot, generation)
                if reason is not None:
                    report.failed[reason] += 1
                else:
                    written[slot] = Variant(*pair, (LLM_OPERATOR,))
            advance(len(chunk))
    report.written = len(written)
    if report.failed:
        log.warning(
            "degrader: %d of %d variants failed (%s); rule-based variants replace them",
            sum(report.failed.values()),
            report.requested,
            dict(report.failed),
        )
    return written, report


def members_of(
    plan: Plan, slots: Sequence[Slot], written: dict[Slot, Variant], cfg: MixtureConfig
) -> list[Variant]:
    """The plan's variants, model-written where available, in a seeded random order."""
    seen = {(source.prompt, source.completion) for source in plan.sources}
    variants = []
    for slot in slots:
        variant = written.get(slot) or rule_variant(slot, cfg, seen)
        if variant is not None:
            seen.add((variant.prompt, variant.completion))
            variants.append(variant)
    random.Random(f"{cfg.seed}/order/{plan.id}").shuffle(variants)
    return variants


def to_record(plan: Plan, variants: Sequence[Variant]) -> dict:
    """The record of a plan (split not yet assigned)."""
    return {
        "id": plan.id,
        "task_type": plan.task_type,
        "members": [
            {"id": f"{plan.id}.{n}", "prompt": v.prompt, "completion": v.completion}
            for n, v in enumerate(variants)
        ],
        "answer": plan.answer,
        "think": plan.think,
        "target_ids": list(plan.target_ids),
        "operators": sorted({name for v in variants for name in v.operators}),
        "cross_topic": plan.cross_topic,
        "split": None,
    }


# ---------------------------------------------------------------------------- splits


def split_labels(task_types: Sequence[str], fractions: dict[str, float], seed: int) -> list[str]:
    """A split per record: shares exact to within one record, stratified by task type.

    Records are visited by task type (in a seeded random order inside each type); each goes
    to the split furthest below its share of the records visited so far.
    """
    rng = random.Random(f"{seed}/splits")
    keys = {i: (TASK_TYPES.index(task), rng.random()) for i, task in enumerate(task_types)}
    counts = dict.fromkeys(fractions, 0)
    labels = [""] * len(task_types)
    for visited, i in enumerate(sorted(keys, key=keys.get), start=1):
        split = max(fractions, key=lambda name: fractions[name] * visited - counts[name])
        counts[split] += 1
        labels[i] = split
    return labels


# ---------------------------------------------------------------------------- build


@dataclass
class MixtureResult:
    """The records (each with its split) and what the build did."""

    records: list[dict]
    plans: PlanReport
    llm: LlmReport | None
    operator_uses: Counter


def make_records(
    seeds: Sequence[Seed],
    cfg: MixtureConfig,
    embedder: Embedder | None = None,
    generator: Generator | None = None,
) -> MixtureResult:
    """Every record, members made, splits assigned; pure given the embedder and generator.

    Without an embedder there are no cross-topic merges.
    """
    plans, plan_report = make_plans(seeds, cfg, embedder)
    rng = random.Random(f"{cfg.seed}/slots")
    slots = {plan.id: slots_of(plan, rng) for plan in plans}
    written: dict[Slot, Variant] = {}
    llm_report = None
    if generator is not None:
        wanted = [
            slot
            for plan in plans
            for slot in slots[plan.id]
            if slot.rng(cfg.seed, "llm").random() < cfg.llm_fraction
        ]
        written, llm_report = llm_variants(wanted, generator, cfg)
    records, uses = [], Counter()
    with progress("mixture: degrade", len(plans), unit="record") as advance:
        for plan in plans:
            variants = members_of(plan, slots[plan.id], written, cfg)
            advance()
            if len(variants) < cfg.min_size:
                plan_report.skipped["too_few_variants"] += len(plan.target_ids)
                continue
            uses.update(name for v in variants for name in v.operators)
            records.append(to_record(plan, variants))
    labels = split_labels([r["task_type"] for r in records], cfg.split_fractions(), cfg.seed)
    for record, label in zip(records, labels, strict=True):
        record["split"] = label
    return MixtureResult(records, plan_report, llm_report, uses)


def make_card(
    result: MixtureResult, seeds: SeedReport, used_seeds: int, cfg: MixtureConfig
) -> dict:
    """The build's summary: counts per split and task type, sizes, operators, seeds, config."""
    records = result.records
    by_split = {
        split: dict(sorted(Counter(r["task_type"] for r in records if r["split"] == split).items()))
        for split in SPLITS
    }
    sizes = Counter(len(r["members"]) for r in records)
    seed_info = seeds.as_dict() | {
        "usable": used_seeds,
        "in_records": sum(len(r["target_ids"]) for r in records),
        "not_used": dict(sorted(result.plans.skipped.items())),
    }
    return {
        "records": len(records),
        "splits": {split: sum(counts.values()) for split, counts in by_split.items()},
        "task_types": dict(sorted(Counter(r["task_type"] for r in records).items())),
        "by_split_and_task": by_split,
        "cross_topic": sum(r["cross_topic"] for r in records),
        "cross_topic_mean_similarity": _mean(result.plans.similarities),
        "with_think": sum(bool(r["think"]) for r in records),
        "cluster_sizes": {str(size): sizes[size] for size in sorted(sizes)},
        "mean_cluster_size": _mean([len(r["members"]) for r in records]),
        "operator_uses": dict(sorted(result.operator_uses.items())),
        "llm_degradations": None if result.llm is None else result.llm.as_dict(),
        "seeds": seed_info,
        "config": cfg.model_dump(mode="json"),
    }


def _mean(values: Sequence[float]) -> float | None:
    """The mean to four places, None for no values."""
    return round(sum(values) / len(values), 4) if values else None


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def card_markdown(card: dict) -> str:
    """The card as a short Markdown report."""
    tasks = list(TASK_TYPES)
    split_rows = [
        [split, *(counts.get(t, 0) for t in tasks), card["splits"][split]]
        for split, counts in card["by_split_and_task"].items()
    ]
    seeds = card["seeds"]
    lines = [
        "# MIXTURE build",
        "",
        f"{card['records']:,} records ({card['cross_topic']:,} cross-topic, "
        f"{card['with_think']:,} with think) from {seeds['in_records']:,} seeds of "
        f"{', '.join(seeds['sources'])}; seed {card['config']['seed']}.",
        "",
        "## Records per split and task type",
        "",
        *_table(["split", *tasks, "total"], split_rows),
        "",
        f"## Cluster sizes (mean {card['mean_cluster_size']})",
        "",
        *_table(["size", "records"], card["cluster_sizes"].items()),
        "",
        "## Operators (variants using each)",
        "",
        *_table(["operator", "variants"], card["operator_uses"].items()),
        "",
        "## Seeds",
        "",
        *_table(["step", "count"], _seed_rows(seeds)),
        "",
    ]
    llm = card["llm_degradations"]
    if llm is not None:
        lines += [
            "## Model degradations",
            "",
            f"{llm['model']}: {llm['written']:,} of {llm['requested']:,} written; "
            f"{llm['fell_back_to_rules']:,} failed and were replaced by rule-based variants "
            f"({llm['failed'] or 'none'}).",
            "",
        ]
    return "\n".join(lines)


def _seed_rows(seeds: dict) -> list[tuple[str, int]]:
    rows = [
        ("imported", seeds["imported"]),
        ("rejected rows", seeds["rejected_rows"]),
        ("filtered by length", seeds["filtered_by_length"]),
    ]
    rows += [(f"dropped: {reason}", n) for reason, n in seeds["dropped"].items()]
    rows += [("usable", seeds["usable"])]
    rows += [(f"not used: {reason}", n) for reason, n in seeds["not_used"].items()]
    return rows + [("in records", seeds["in_records"])]


def write_mixture(out_dir: str | Path, records: Sequence[dict], card: dict) -> dict[str, Path]:
    """Write one JSONL file per split, card.json and card.md; returns their paths."""
    out = Path(out_dir)
    paths = {split: out / f"{split}.jsonl" for split in SPLITS}
    for split, path in paths.items():
        write_records(path, (r for r in records if r["split"] == split))
    paths["card"] = out / "card.json"
    paths["card"].write_text(
        json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    paths["card_md"] = out / "card.md"
    paths["card_md"].write_text(card_markdown(card), encoding="utf-8")
    return paths


def build_mixture(
    cfg: MixtureConfig,
    out_dir: str | Path,
    *,
    embedder: Embedder | None = None,
    generator: Generator | None = None,
) -> dict:
    """Build the MIXTURE files from the configured seeds into `out_dir`; returns the card.

    The embedder and the degrader default to the configured ones (none when
    `cross_topic_fraction` is 0 or no `degrader` is set).
    """
    seeds, seed_report = load_seeds(cfg, Path(out_dir) / REJECTS_FILE)
    if embedder is None and cfg.cross_topic_fraction > 0:
        embedder = load_pair_embedder(cfg.embedder)
    if generator is None and cfg.degrader is not None:
        from lmmixup.backends import load_generator
        from lmmixup.io.cache import CallCache

        generator = load_generator(cfg.degrader, CallCache())
    result = make_records(seeds, cfg, embedder, generator)
    card = make_card(result, seed_report, len(seeds), cfg)
    write_mixture(out_dir, result.records, card)
    return card
