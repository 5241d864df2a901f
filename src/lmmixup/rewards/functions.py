"""GRPO rewards for the distiller (SPEC stage 8), as plain callables for TRL's GRPOTrainer.

Every reward has TRL's signature ``f(completions, **columns) -> list[float]``: ``completions``
are strings or chat-message lists (the last assistant message is judged); dataset columns
arrive as lists aligned with them (``task_type``, missing = qa; ``reference``); whatever else
TRL passes (``prompts``, ``completion_ids``, ``trainer_state``, ...) is ignored, except
``log_metric``, which receives each batch's reward time as ``reward_seconds/<component>``.

- format: 0.5 when the whole reply is ``<think>..</think><answer>..</answer>`` with only
  whitespace around (one block each, no tags inside); + 0.5 when the first ``<answer>`` block
  parses and follows the task type's layout (paragraph: any non-blank text). The second half
  does not need the first: a reply with stray text or a second answer block still earns it.
  A blank answer earns no layout credit, so tags alone score 0.5. Both halves are the
  ``well_formed`` and ``layout`` of :func:`lmmixup.method.reply.reply_format`, the definition
  ``distill`` and ``eval distiller`` use too: an answer never closed earns nothing.
- alignment: cosine between the answer and the ``reference`` column; 1 if >= 0.8 else 0
  (``threshold`` mode, the paper's) or the cosine clipped to [0, 1] (``continuous``).
- quality: the kNN-Bayes score of the answer text by the task type's scorer of a
  :class:`ScorerLibrary`; the paper's bands (1 / 0.3 / 0) or ``E / 5`` (``continuous``).
- mixup: ``0.5 * quality + 0.4 * alignment + 0.1 * format`` (weights configurable, also
  per task type: a row's ``task_type`` picks its weights from ``weights_by_task`` when that
  names it, else the global weights).

A reply with no parsable ``<answer>`` block, or a blank one, gets 0 for alignment and quality:
that is its reward, not a failure.

Failures are counted, logged and re-raised (:mod:`lmmixup.rewards.stats`), never replaced
by a default. The ready-made callables with env defaults are in :mod:`lmmixup.rewards.defaults`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from lmmixup.method.knn_bayes import (
    KnnBayesScores,
    ScorerLibrary,
    banded_reward,
    continuous_reward,
)
from lmmixup.method.reply import parse_output, reply_format
from lmmixup.method.tasks import task_format
from lmmixup.rewards.stats import REWARD_STATS, RewardStats, run_batch
from lmmixup.types import Embedder

log = logging.getLogger(__name__)

DEFAULT_TASK_TYPE = "qa"
ALIGNMENT_MODES = ("threshold", "continuous")
QUALITY_MODES = ("banded", "continuous")
MIXUP_WEIGHTS = (0.5, 0.4, 0.1)
ALIGNMENT_THRESHOLD = 0.8
STRUCTURE_CREDIT = PATTERN_CREDIT = 0.5

Completion = str | Sequence[Mapping[str, Any]]
RewardFn = Callable[..., list[float]]


# ---------------------------------------------------------------------------- inputs


def _content_text(content: Any) -> str:
    """A message's text: a string, or the text parts of a multimodal content list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text") or "" for part in content if part.get("type") == "text")


def completion_text(completion: Completion) -> str:
    """The text judged: the string itself, or the last assistant message's content ("" if none)."""
    if isinstance(completion, str):
        return completion
    for message in reversed(completion):
        if message.get("role") == "assistant":
            return _content_text(message.get("content"))
    return ""


def answer_of(text: str) -> str | None:
    """The first ``<answer>`` block, stripped; None when the reply has no closed block."""
    parsed = parse_output(text)
    return None if parsed is None else parsed.answer


def _column(columns: Mapping[str, Any], name: str, size: int) -> list[Any] | None:
    """A dataset column as a list of ``size`` values; None when it is absent."""
    values = columns.get(name)
    if values is None:
        return None
    values = list(values)
    if len(values) != size:
        raise ValueError(f"column {name!r} has {len(values)} values for {size} completions")
    return values


def task_types(columns: Mapping[str, Any], size: int) -> list[str]:
    """The ``task_type`` column, with qa for a missing column or a missing value."""
    values = _column(columns, "task_type", size) or [None] * size
    return [value or DEFAULT_TASK_TYPE for value in values]


def _references(columns: Mapping[str, Any], size: int) -> list[str]:
    """The ``reference`` column; an error when it or one of its values is missing."""
    values = _column(columns, "reference", size)
    if values is None:
        raise ValueError("the alignment reward needs a 'reference' column (the target text)")
    missing = [row for row, value in enumerate(values) if not isinstance(value, str)]
    if missing:
        raise ValueError(f"'reference' is not a string in rows {missing[:5]}")
    return values


def _scorable(answers: Sequence[str | None]) -> list[int]:
    """Rows whose answer exists and is not blank (the others get 0)."""
    return [row for row, answer in enumerate(answers) if answer]


def encode_texts(embedder: Embedder, texts: list[str]) -> np.ndarray:
    """One row per text from one encode call of the distinct texts; an error unless all finite.

    A GRPO batch repeats each prompt's reference once per generation, so distinct texts
    are far fewer.
    """
    distinct = list(dict.fromkeys(texts))
    vectors = np.asarray(embedder.encode(distinct), dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(distinct) or not np.all(np.isfinite(vectors)):
        raise ValueError(f"the embedder returned {vectors.shape} for {len(distinct)} texts")
    where = {text: row for row, text in enumerate(distinct)}
    return vectors[[where[text] for text in texts]]


def _check_choice(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {allowed}, got {value!r}")


# ---------------------------------------------------------------------------- format


def format_score(text: str, task_type: str = DEFAULT_TASK_TYPE) -> float:
    """Format reward of one reply: structure credit plus layout credit (module doc)."""
    form = reply_format(text, task_type)
    return (STRUCTURE_CREDIT if form.well_formed else 0.0) + (
        PATTERN_CREDIT if form.layout else 0.0
    )


def make_format_reward(stats: RewardStats = REWARD_STATS) -> RewardFn:
    """The format reward, counting its batches in ``stats``."""

    def format_reward(completions: Sequence[Completion], **columns: Any) -> list[float]:
        """0.5 for the think/answer structure + 0.5 for the task layout in the answer."""

        def compute() -> np.ndarray:
            kinds = task_types(columns, len(completions))
            for kind in set(kinds):
                task_format(kind)  # an unknown task type is an error even without an answer
            return np.array(
                [
                    format_score(completion_text(c), kind)
                    for c, kind in zip(completions, kinds, strict=True)
                ]
            )

        return run_batch(stats, "format", len(completions), compute, columns.get("log_metric"))

    return format_reward


# ---------------------------------------------------------------------------- alignment


def make_alignment_reward(
    embedder: Embedder,
    mode: str = "threshold",
    threshold: float = ALIGNMENT_THRESHOLD,
    stats: RewardStats = REWARD_STATS,
) -> RewardFn:
    """Semantic alignment of the answer with the ``reference`` column.

    ``threshold``: 1.0 when the cosine is >= ``threshold``, else 0; ``continuous``: the cosine
    clipped to [0, 1]. Answers and references of a batch are embedded in one encode call.
    """
    _check_choice(mode, ALIGNMENT_MODES, "alignment mode")

    def alignment_reward(completions: Sequence[Completion], **columns: Any) -> list[float]:
        """Cosine of answer and reference, thresholded or clipped; 0 without an answer."""

        def compute() -> np.ndarray:
            references = _references(columns, len(completions))
            answers = [answer_of(completion_text(c)) for c in completions]
            rows = _scorable(answers)
            values = np.zeros(len(completions))
            if rows:
                texts = [answers[row] for row in rows] + [references[row] for row in rows]
                vectors = encode_texts(embedder, texts)
                cosine = np.sum(vectors[: len(rows)] * vectors[len(rows) :], axis=1)
                aligned = cosine >= threshold if mode == "threshold" else np.clip(cosine, 0, 1)
                values[rows] = aligned
            return values

        return run_batch(stats, "alignment", len(completions), compute, columns.get("log_metric"))

    return alignment_reward


# ---------------------------------------------------------------------------- quality


def _rows_by_task(rows: list[int], kinds: list[str]) -> dict[str, list[int]]:
    """Positions in ``rows`` grouped by the task type of the row they hold."""
    groups: dict[str, list[int]] = {}
    for position, row in enumerate(rows):
        groups.setdefault(kinds[row], []).append(position)
    return groups


def _quality_values(scores: KnnBayesScores, mode: str) -> np.ndarray:
    if mode == "banded":
        return banded_reward(scores.expected, scores.mode)
    return continuous_reward(scores.expected)


def _warn_on_embedder_mismatch(library: ScorerLibrary, embedder: Embedder) -> None:
    """Log when the embedder is not the one a scorer's library was embedded with."""
    name = getattr(embedder, "name", None)
    for task, scorer in library.scorers.items():
        if name and scorer.embedder and scorer.embedder != name:
            log.warning(
                "quality scorer %r was built with embedder %r, scoring with %r",
                task,
                scorer.embedder,
                name,
            )


def make_quality_reward(
    library: ScorerLibrary,
    embedder: Embedder,
    mode: str = "banded",
    k: int = 16,
    stats: RewardStats = REWARD_STATS,
) -> RewardFn:
    """kNN-Bayes quality of the answer text, by the scorer of its task type (else "default").

    ``banded``: the paper's 1.0 / 0.3 / 0 from E and the posterior mode; ``continuous``: E / 5.
    Answers of a batch are embedded in one encode call.
    """
    _check_choice(mode, QUALITY_MODES, "quality mode")
    _warn_on_embedder_mismatch(library, embedder)

    def quality_reward(completions: Sequence[Completion], **columns: Any) -> list[float]:
        """kNN-Bayes score of the answer, banded or E / 5; 0 without an answer."""

        def compute() -> np.ndarray:
            kinds = task_types(columns, len(completions))
            answers = [answer_of(completion_text(c)) for c in completions]
            rows = _scorable(answers)
            values = np.zeros(len(completions))
            if rows:
                vectors = encode_texts(embedder, [answers[row] for row in rows])
                for task, positions in _rows_by_task(rows, kinds).items():
                    scores = library.for_task(task).score(vectors[positions], k=k)
                    values[[rows[p] for p in positions]] = _quality_values(scores, mode)
            return values

        return run_batch(stats, "quality", len(completions), compute, columns.get("log_metric"))

    return quality_reward


# ---------------------------------------------------------------------------- mixup


def _checked_weights(weights: Sequence[float]) -> np.ndarray:
    array = np.asarray(weights, dtype=np.float64)
    if array.shape != (3,) or not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"weights must be 3 finite numbers >= 0, got {weights!r}")
    return array


def row_weights(
    kinds: Sequence[str],
    weights: Sequence[float],
    weights_by_task: Mapping[str, Sequence[float]] | None = None,
) -> np.ndarray:
    """One row of (quality, alignment, format) weights per task type in ``kinds``: the task's
    own from ``weights_by_task`` where it names the task, else ``weights``."""
    mix = _checked_weights(weights)
    by_task = {task: _checked_weights(w) for task, w in (weights_by_task or {}).items()}
    return np.array([by_task.get(kind, mix) for kind in kinds], dtype=np.float64).reshape(-1, 3)


def make_mixup_reward(
    quality_fn: RewardFn,
    alignment_fn: RewardFn,
    format_fn: RewardFn,
    weights: Sequence[float] = MIXUP_WEIGHTS,
    stats: RewardStats = REWARD_STATS,
    weights_by_task: Mapping[str, Sequence[float]] | None = None,
) -> RewardFn:
    """``w_q * quality + w_a * alignment + w_f * format``, each component computed once a batch.

    A row's weights are its task type's in ``weights_by_task`` (when given and naming it),
    else ``weights``. The result lies in [0, sum of the row's weights] (the defaults sum to 1).
    """
    mix = _checked_weights(weights)
    row_weights([], weights, weights_by_task)  # bad weights fail here, not in training

    def mixup_reward(completions: Sequence[Completion], **columns: Any) -> list[float]:
        """The weighted sum of the quality, alignment and format rewards."""

        def compute() -> np.ndarray:
            parts = [fn(completions, **columns) for fn in (quality_fn, alignment_fn, format_fn)]
            values = np.asarray(parts, dtype=np.float64).reshape(3, len(completions))
            if not weights_by_task:
                return mix @ values
            kinds = task_types(columns, len(completions))
            return np.sum(row_weights(kinds, weights, weights_by_task) * values.T, axis=1)

        return run_batch(stats, "mixup", len(completions), compute, columns.get("log_metric"))

    return mixup_reward
