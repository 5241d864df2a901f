"""The logprob judge behind an OpenAI-compatible server (vLLM, llama.cpp).

The server's chat completion, asked for one token after the rubric and the pre-filled
`{"overall":` with `logprobs` and the top TOP_K alternatives, gives the same reading as a
local hf judge's forward pass: `ServerScorer` offers the `next_token_logprobs` that
`judge_scores.score_distribution` reads, so the scoring (bare and space-led score tokens,
the second call for "10" after a likely "1", the expected value) is the local judge's own.
A score token outside the top TOP_K counts as probability 0. A request that fails, or a
reply without logprobs, is a recorded failure of that record (rating null), never a default.

`mode: auto` asks the server once when the judge loads (`probe`, one fixed pair): the
logprob judge when the reply has logprobs that put at least MIN_DIGIT_MASS on a score, else
the generate judge with a note saying why (recorded in the manifest).
"""

from __future__ import annotations

import json

import numpy as np

from lmmixup.backends.base import Messages, RequestBudgetExhausted
from lmmixup.method.rubric import (
    LOGPROB_ASSISTANT_PREFIX,
    RATING_MAX,
    RATING_MIN,
    build_rubric_logprob_prompt,
)
from lmmixup.stages.judge_scores import MIN_DIGIT_MASS, ScoreReading, score_distribution

TOP_K = 20
"""Alternatives asked for per request: vLLM's default --max-logprobs, OpenAI's maximum."""

_SCORES = tuple(range(RATING_MIN, RATING_MAX + 1))
SERVER_READING = ScoreReading(
    candidates=tuple(str(v) for v in _SCORES) + tuple(f" {v}" for v in _SCORES),
    values=_SCORES + _SCORES,
    tens=(str(RATING_MIN), f" {RATING_MIN}"),
)
"""A server's vocabulary is unknown: read each score bare and with a leading space (tokens a
server does not list count 0), and read a "0" after a likely "1" in case "10" is two tokens."""

_TURN = "\n"  # between the messages (JSON: no raw newline) and the pre-filled text
PROBE_PAIR = ("What is 2 + 2?", "2 + 2 = 4.")


class ServerScorer:
    """Token probabilities from a server, in the shape `score_distribution` reads.

    A "text" is `render(messages, prefix)`: the messages as JSON, a newline, then the text
    the assistant turn is pre-filled with. A row that could not be read is NaN throughout;
    `failure(text)` says why. A spent request cap sets `stop.reason` (`judge.BudgetStop`: the
    stage stops after the batch).
    """

    def __init__(self, model, stop, top_k: int = TOP_K):
        self.model = model
        self.stop = stop
        self.top_k = top_k
        self.name = model.name
        self.fingerprint = f"{model.fingerprint}:top{top_k}"
        self._errors: dict[str, str] = {}

    def render(self, messages: Messages, assistant_prefix: str = "") -> str:
        return json.dumps(messages, ensure_ascii=False, sort_keys=True) + _TURN + assistant_prefix

    def failure(self, text: str) -> str:
        """Why the row of `text` (or of a longer pre-fill of the same messages) is NaN."""
        return self._errors.get(text.partition(_TURN)[0], "no score probabilities were read")

    def next_token_logprobs(
        self, texts: list[str], candidates: list[str], context: str = ""
    ) -> np.ndarray:
        """log P(candidate | text) per text, -inf for a candidate the server did not list."""
        by_prefix: dict[str, list[int]] = {}
        for index, text in enumerate(texts):
            by_prefix.setdefault(text.partition(_TURN)[2], []).append(index)
        out = np.full((len(texts), len(candidates)), np.nan)
        for prefix, rows in by_prefix.items():
            messages = [json.loads(texts[i].partition(_TURN)[0]) for i in rows]
            for row, reading in zip(rows, self._read(messages, prefix), strict=True):
                if isinstance(reading, dict):
                    out[row] = [reading.get(c, -np.inf) for c in candidates]
                else:
                    self._errors[texts[row].partition(_TURN)[0]] = reading
        return out

    def _read(self, prompts: list[Messages], prefix: str) -> list[dict[str, float] | str]:
        try:
            readings = self.model.next_token_top_logprobs(prompts, prefix, self.top_k)
        except RequestBudgetExhausted as exc:
            self.stop.reason = str(exc)
            readings = exc.results
        return [
            "not sent: the request cap (max_requests) was reached" if r is None else r
            for r in readings
        ]


def probe(scorer: ServerScorer) -> str | None:
    """None when the server gives score probabilities after the pre-filled turn (one probe
    pair, uncached), else why the logprob judge cannot be used with it."""
    prompt = build_rubric_logprob_prompt(*PROBE_PAIR)
    text = scorer.render(prompt.messages, prompt.assistant_prefix)
    [row] = score_distribution(scorer, [text], SERVER_READING)
    if not np.isfinite(row).all():
        return scorer.failure(text)
    if row.sum() < MIN_DIGIT_MASS:
        return (
            f"the server put only {row.sum():.1%} probability on a score 1-10 right after the "
            f"pre-filled {LOGPROB_ASSISTANT_PREFIX!r} in a probe (it may not continue a "
            "pre-filled assistant turn)"
        )
    return None
