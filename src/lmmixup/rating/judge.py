"""The rubric judge as a batch function: pool records in, records with `rating` out.

Two modes:
- `generate`: the judge writes the JSON rating; unparsable replies are retried (sampled,
  new seed) up to `attempts` times, then recorded as failures (`rating: null`,
  `rating_error`) that the next run retries. Never a default score.
- `logprob` (local hf judges): one forward pass reads the probabilities of the score tokens
  after the rubric and the pre-filled `{"overall":`; the rating is their expected value.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lmmixup.backends.base import GenParams, RequestBudgetExhausted
from lmmixup.cache import CallCache, call_key
from lmmixup.config import RateConfig
from lmmixup.errors import ConfigError
from lmmixup.rating.rubric import (
    RATING_MAX,
    RATING_MIN,
    Rating,
    build_rubric_logprob_prompt,
    build_rubric_messages,
    compress_score,
    parse_rating,
)

MIN_DIGIT_MASS = 0.05
# A "1" this likely may be the start of "10": read the next digit too (a second, small pass).
_TEN_CHECK = 0.02
MAX_JUDGED_CHARS = 4000


def _clip(text: str) -> str:
    return text if len(text) <= MAX_JUDGED_CHARS else text[:MAX_JUDGED_CHARS] + " [...]"


def failed(record: dict, reason: str) -> dict:
    """The record with a recorded rating failure."""
    return {**record, "rating": None, "rating_error": reason}


def rated(record: dict, rating: dict) -> dict:
    out = {**record, "rating": rating}
    out.pop("rating_error", None)
    return out


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
                build_rubric_messages(_clip(batch[i]["prompt"]), _clip(batch[i]["completion"]))
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
                elif (rating := parse_rating(reply.text)) is None:
                    errors[index] = f"no parsable rating in the judge's reply: {reply.text[:120]!r}"
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


def score_distribution(model, texts: list[str]) -> np.ndarray:
    """P(overall = 1..10) for each rendered prompt (unnormalised: rows sum to the digit mass).

    Digits 1-9 are single tokens in most vocabularies; "10" is read as "1" followed by "0"
    for the rows where "1" is likely enough to matter.
    """
    digits = [str(d) for d in range(10)]
    probs = np.exp(model.next_token_logprobs(texts, digits))
    dist = np.zeros((len(texts), RATING_MAX), dtype=np.float64)
    dist[:, : RATING_MAX - 1] = probs[:, RATING_MIN:10]
    ones = np.flatnonzero(probs[:, 1] >= _TEN_CHECK)
    if ones.size:
        zero_after_one = np.exp(model.next_token_logprobs([texts[i] + "1" for i in ones], ["0"]))[
            :, 0
        ]
        dist[ones, RATING_MAX - 1] = probs[ones, 1] * zero_after_one
        dist[ones, 0] = probs[ones, 1] * (1.0 - zero_after_one)
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


def cached_distribution(model, texts: list[str], cache: CallCache | None) -> np.ndarray:
    """`score_distribution`, served from the call cache where it was computed before."""
    if cache is None:
        return score_distribution(model, texts)
    keys = [call_key(model.fingerprint, text, {"kind": "score-distribution"}) for text in texts]
    rows = [cache.get(key) for key in keys]
    missing = [i for i, row in enumerate(rows) if row is None]
    if missing:
        fresh = score_distribution(model, [texts[i] for i in missing])
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

    def judge(batch: list[dict]) -> list[dict]:
        prompts = [
            build_rubric_logprob_prompt(_clip(r["prompt"]), _clip(r["completion"])) for r in batch
        ]
        texts = [model.render(p.messages, p.assistant_prefix) for p in prompts]
        dist = cached_distribution(model, texts, cache)
        out = []
        for record, row in zip(batch, dist, strict=True):
            rating = logprob_rating(row, model.name)
            out.append(failed(record, rating) if isinstance(rating, str) else rated(record, rating))
        return out

    return judge
