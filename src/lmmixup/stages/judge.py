"""The rubric judge as a batch function: pool records in, records with `rating` out.

Two modes:
- `generate`: the judge writes the JSON rating; unparsable replies are retried (sampled,
  new seed) up to `attempts` times, then recorded as failures (`rating: null`,
  `rating_error`) that the next run retries. Never a default score.
- `logprob` (local hf judges): one forward pass reads the probabilities of the score tokens
  after the rubric and the pre-filled `{"overall":`; the rating is their expected value.

The judge sees at most MAX_JUDGED_CHARS characters of a prompt or completion; a record
whose text was cut for it says so in `truncated_for_judge` (the names of the cut fields).
`JudgeStage` is the judge as a per-record stage an executor runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmmixup.backends.base import GenParams, RequestBudgetExhausted
from lmmixup.config import RateConfig
from lmmixup.errors import ConfigError
from lmmixup.io.cache import CallCache, call_key
from lmmixup.method.rubric import (
    LOGPROB_ASSISTANT_PREFIX,
    RATING_MAX,
    RATING_MIN,
    Rating,
    build_rubric_logprob_prompt,
    build_rubric_messages,
    compress_score,
    read_rating,
)
from lmmixup.runtime.executor import RecordStage

MIN_DIGIT_MASS = 0.05
# A "1" this likely may be the start of "10": read the next digit too (a second, small pass).
_TEN_CHECK = 0.02
MAX_JUDGED_CHARS = 4000
JUDGED_FIELDS = ("prompt", "completion")
TRUNCATED_KEY = "truncated_for_judge"


def _clip(text: str) -> str:
    return text if len(text) <= MAX_JUDGED_CHARS else text[:MAX_JUDGED_CHARS] + " [...]"


def _note_truncation(record: dict) -> dict:
    """Name, under TRUNCATED_KEY, the fields the judge saw only the start of."""
    cut = [name for name in JUDGED_FIELDS if len(record[name]) > MAX_JUDGED_CHARS]
    if cut:
        record[TRUNCATED_KEY] = cut
    else:
        record.pop(TRUNCATED_KEY, None)
    return record


def rubric_task(record: dict, cfg: RateConfig) -> str | None:
    """The task type whose rubric paragraph the judge sees: the record's own with
    `rate.rubric_by_task`, else None (the one rubric for all)."""
    return record.get("task_type") if cfg.rubric_by_task else None


def is_rated(record: dict) -> bool:
    return record.get("rating") is not None


def failed(record: dict, reason: str) -> dict:
    """The record with a recorded rating failure."""
    return _note_truncation({**record, "rating": None, "rating_error": reason})


def rated(record: dict, rating: dict) -> dict:
    out = {**record, "rating": rating}
    out.pop("rating_error", None)
    return _note_truncation(out)


class BudgetStop:
    """Set when the backend's request cap is reached, so the stage stops after this batch."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def __call__(self) -> bool:
        return self.reason is not None


def make_generate_judge(
    generator, cfg: RateConfig, stop: BudgetStop, run_index: int = 0
) -> Callable[[list[dict]], list[dict]]:
    """Batch function: the judge writes JSON ratings; failures are recorded, not defaulted.

    The first attempt of the first run is greedy; every later attempt, including those of a
    re-run (`run_index` > 0), samples with a new seed, so a retry really asks again instead
    of being answered from the call cache.
    """

    def judge(batch: list[dict]) -> list[dict]:
        results: dict[int, dict] = {}
        pending = list(range(len(batch)))
        errors: dict[int, str] = {}
        for attempt in range(run_index * cfg.attempts, (run_index + 1) * cfg.attempts):
            if not pending or stop():
                break
            params = GenParams(
                max_new_tokens=cfg.max_new_tokens,
                temperature=0.0 if attempt == 0 else 0.7,
                seed=attempt,
            )
            prompts = [
                build_rubric_messages(
                    _clip(batch[i]["prompt"]),
                    _clip(batch[i]["completion"]),
                    rubric_task(batch[i], cfg),
                )
                for i in pending
            ]
            try:
                replies = generator.generate(prompts, params)
            except RequestBudgetExhausted as exc:
                stop.reason = str(exc)
                replies = exc.results
            still = []
            for index, reply in zip(pending, replies, strict=True):
                if reply is None:
                    errors[index] = "not sent: the request cap (max_requests) was reached"
                    still.append(index)
                elif not reply.ok:
                    errors[index] = f"judge call failed: {reply.error}"
                    still.append(index)
                elif isinstance(rating := read_rating(reply.text), str):
                    errors[index] = f"unusable judge reply ({rating}): {reply.text[:120]!r}"
                    still.append(index)
                else:
                    results[index] = rating.to_record(generator.name, "judge-generate")
            pending = still
        return [
            rated(record, results[i])
            if i in results
            else failed(record, errors.get(i, "not judged"))
            for i, record in enumerate(batch)
        ]

    return judge


@dataclass(frozen=True)
class ScoreReading:
    """How a judge's vocabulary writes the scores right after the pre-filled `{"overall":`.

    `candidates[i]` spells the score `values[i]` in one token, and no two candidates share a
    token. Where "10" is two tokens, `tens` names the candidates ("1", " 1") after which a
    "0" makes the score 10.
    """

    candidates: tuple[str, ...]
    values: tuple[int, ...]
    tens: tuple[str, ...]


def _spelling(model, lead: str) -> tuple[dict[str, int], tuple[str, ...]] | None:
    """The one-token scores written with `lead` ("" or " ") in front, and the "1" a "0" may
    follow when "10" is two tokens; None where the vocabulary cannot write them so."""
    texts = [lead + str(value) for value in range(RATING_MIN, RATING_MAX + 1)]
    ids = model.single_token_ids(LOGPROB_ASSISTANT_PREFIX, texts)
    if None in ids[:-1] or len(set(ids)) < len(ids):
        return None
    if ids[-1] is not None:
        return dict(zip(texts, ids, strict=True)), ()
    one = lead + str(RATING_MIN)
    if model.single_token_ids(LOGPROB_ASSISTANT_PREFIX + one, ["0"]) == [None]:
        return None
    return dict(zip(texts[:-1], ids[:-1], strict=True)), (one,)


def score_reading(model) -> ScoreReading:
    """The score candidates of this judge: the bare scores, and the space-prefixed ones where
    the vocabulary has them as distinct tokens too. Refuses a vocabulary that cannot write
    each bare score as its own token (reading a shared piece would invent the rating)."""
    bare = _spelling(model, "")
    if bare is None:
        raise ConfigError(
            f"rate.mode=logprob cannot read scores from {model.name}: its vocabulary does not "
            f"write each score 1-10 after {LOGPROB_ASSISTANT_PREFIX!r} as its own token; "
            "rate with --mode generate"
        )
    tokens, tens = bare
    spaced = _spelling(model, " ")
    if spaced is not None and not set(spaced[0].values()) & set(tokens.values()):
        tokens, tens = tokens | spaced[0], tens + spaced[1]
    return ScoreReading(tuple(tokens), tuple(int(text) for text in tokens), tens)


def _zero_after(model, texts: list[str], one: str, p_one: np.ndarray) -> np.ndarray:
    """P("0" | text + one) for the rows where `one` is likely enough to start a 10, else 0."""
    q = np.zeros(len(texts), dtype=np.float64)
    rows = np.flatnonzero(p_one >= _TEN_CHECK)
    if rows.size:
        q[rows] = np.exp(
            model.next_token_logprobs(
                [texts[i] + one for i in rows], ["0"], LOGPROB_ASSISTANT_PREFIX + one
            )
        )[:, 0]
    return q


def score_distribution(model, texts: list[str], reading: ScoreReading | None = None) -> np.ndarray:
    """P(overall = 1..10) for each rendered prompt (unnormalised: rows sum to the score mass).

    One pass reads every candidate of the `reading` (by default the model's own); where "10"
    is "1" then "0", a second, small pass reads the "0" after a likely "1".
    """
    reading = reading or score_reading(model)
    probs = np.exp(
        model.next_token_logprobs(texts, list(reading.candidates), LOGPROB_ASSISTANT_PREFIX)
    )
    dist = np.zeros((len(texts), RATING_MAX), dtype=np.float64)
    for column, (text, value) in enumerate(zip(reading.candidates, reading.values, strict=True)):
        p = probs[:, column]
        if text in reading.tens:
            q = _zero_after(model, texts, text, p)
            dist[:, RATING_MAX - 1] += p * q
            p = p * (1.0 - q)
        dist[:, value - RATING_MIN] += p
    return dist


def logprob_rating(dist_row: np.ndarray, rater: str) -> dict | str:
    """A rating record from one row of `score_distribution`, or the failure reason."""
    mass = float(dist_row.sum())
    if mass < MIN_DIGIT_MASS:
        return f"the judge put only {mass:.1%} probability on a score 1-10"
    expected = float(np.dot(np.arange(RATING_MIN, RATING_MAX + 1), dist_row / mass))
    overall = int(min(RATING_MAX, max(RATING_MIN, round(expected))))
    record = Rating(overall=overall).to_record(rater, "judge-logprob")
    record.update(
        score=compress_score(expected),
        expected_overall=round(expected, 4),
        score_mass=round(mass, 4),
    )
    return record


def cached_distribution(
    model, texts: list[str], cache: CallCache | None, reading: ScoreReading
) -> np.ndarray:
    """`score_distribution`, served from the call cache where it was computed before."""
    if cache is None:
        return score_distribution(model, texts, reading)
    params = {
        "kind": "score-distribution",
        "candidates": list(reading.candidates),
        "tens": list(reading.tens),
    }
    keys = [call_key(model.fingerprint, text, params) for text in texts]
    rows = [cache.get(key) for key in keys]
    missing = [i for i, row in enumerate(rows) if row is None]
    if missing:
        fresh = score_distribution(model, [texts[i] for i in missing], reading)
        cache.put_many({keys[i]: row.tolist() for i, row in zip(missing, fresh, strict=True)})
        for i, row in zip(missing, fresh, strict=True):
            rows[i] = row
    return np.asarray(rows, dtype=np.float64)


def make_logprob_judge(
    model, cfg: RateConfig, cache: CallCache | None = None
) -> Callable[[list[dict]], list[dict]]:
    """Batch function: expected Overall from the score-token probabilities (hf judges)."""
    if not hasattr(model, "next_token_logprobs"):
        raise ConfigError(
            f"rate.mode=logprob needs a local hf judge; '{model.name}' cannot give token probabilities (use mode=generate)"
        )
    reading = score_reading(model)

    def judge(batch: list[dict]) -> list[dict]:
        prompts = [
            build_rubric_logprob_prompt(
                _clip(r["prompt"]), _clip(r["completion"]), rubric_task(r, cfg)
            )
            for r in batch
        ]
        texts = [model.render(p.messages, p.assistant_prefix) for p in prompts]
        dist = cached_distribution(model, texts, cache, reading)
        out = []
        for record, row in zip(batch, dist, strict=True):
            rating = logprob_rating(row, model.name)
            out.append(failed(record, rating) if isinstance(rating, str) else rated(record, rating))
        return out

    return judge


def load_judge_fn(cfg: RateConfig, cache: CallCache | None, stop: BudgetStop, run_index: int):
    """The judge's batch function for `cfg.mode` and the model behind it."""
    from lmmixup.backends import load_generator

    if cfg.mode == "logprob":  # RateConfig allows it only with judge.backend=hf
        from lmmixup.backends.hf import HFChatModel

        model = HFChatModel(cfg.judge.model, dtype=cfg.judge.dtype, batch_size=cfg.judge.batch_size)
        return make_logprob_judge(model, cfg, cache), model
    generator = load_generator(cfg.judge, cache)
    return make_generate_judge(generator, cfg, stop, run_index), generator


class JudgeStage(RecordStage):
    """The rubric judge as a per-record stage: pool records in, records with `rating` out.

    Built from the rate config, the call cache's path (None: no cache) and `run_index` (how
    many runs of the stage came before: re-runs ask again with new seeds). A failed rating is
    an output line that is not done, so the next run retries it; a spent request cap stops
    the stage after the batch in flight. `close()` reports the model's usage, the cache's
    hits and misses, and why it stopped.
    """

    description = "rate (judge)"

    def __init__(self, cfg: RateConfig, cache_path: Path | None = None, run_index: int = 0):
        self.cfg = cfg
        self.cache_path = cache_path
        self.run_index = run_index
        judge = cfg.judge
        self.batch_size = judge.concurrency * 4 if judge.backend == "openai" else judge.batch_size
        self._stop = BudgetStop()
        self._cache: CallCache | None = None
        self._judge: Callable[[list[dict]], list[dict]] | None = None
        self._model: Any = None

    def open(self) -> None:
        self._stop = BudgetStop()
        self._cache = None if self.cache_path is None else CallCache(self.cache_path)
        self._judge, self._model = load_judge_fn(self.cfg, self._cache, self._stop, self.run_index)

    def process(self, batch: list[dict]) -> list[dict]:
        return self._judge(batch)

    def is_done(self, record: dict) -> bool:
        return is_rated(record)

    def should_stop(self) -> bool:
        return self._stop()

    @property
    def stop_reason(self) -> str | None:
        """Why the judge stopped (a spent request cap), None while it may go on."""
        return self._stop.reason

    def close(self) -> dict[str, Any]:
        report: dict[str, Any] = {}
        usage = getattr(getattr(self._model, "inner", self._model), "usage", None)
        if usage:
            report["usage"] = dict(usage)
        if self._stop.reason:
            report["stopped"] = self._stop.reason
        if self._cache is not None:
            report["cache"] = self._cache.stats()
            self._cache.close()
        self._judge = self._model = self._cache = None
        return report
