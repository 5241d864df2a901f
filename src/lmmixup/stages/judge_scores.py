"""Reading a judge's score from its next-token probabilities after `{"overall":`.

`score_distribution` gives P(overall = 1..10) from any model offering `next_token_logprobs`
(a local hf judge, or `judge_server.ServerScorer` for a server); `logprob_rating` turns a row
into a rating record, `cached_distribution` serves rows from the call cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmmixup.errors import ConfigError
from lmmixup.io.cache import CallCache, call_key
from lmmixup.method.rubric import (
    LOGPROB_ASSISTANT_PREFIX,
    RATING_MAX,
    RATING_MIN,
    Rating,
    compress_score,
)

MIN_DIGIT_MASS = 0.05
# A "1" this likely may be the start of "10": read the next digit too (a second, small pass).
_TEN_CHECK = 0.02


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
        cache.put_many(
            {
                keys[i]: row.tolist()
                for i, row in zip(missing, fresh, strict=True)
                if np.isfinite(row).all()  # a row a server failed to give (NaN) is asked again
            }
        )
        for i, row in zip(missing, fresh, strict=True):
            rows[i] = row
    return np.asarray(rows, dtype=np.float64)
