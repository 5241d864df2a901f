"""The rubric judge as a batch function: pool records in, records with `rating` out.

Two modes:
- `generate`: the judge writes the JSON rating; unparsable replies are retried (sampled,
  new seed) up to `attempts` times, then recorded as failures (`rating: null`,
  `rating_error`) that the next run retries. Never a default score.
- `logprob`: one forward pass (local hf judges), or one request with top logprobs (servers,
  `judge_server`), reads the probabilities of the score tokens after the rubric and the
  pre-filled `{"overall":`; the rating is their expected value.

The judge sees at most MAX_JUDGED_CHARS characters of a prompt or completion; a record
whose text was cut for it says so in `truncated_for_judge` (the names of the cut fields).
`JudgeStage` is the judge as a per-record stage an executor runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lmmixup.backends.base import Generation, GenParams, RequestBudgetExhausted, usage_of
from lmmixup.config import BackendConfig, RateConfig
from lmmixup.errors import ConfigError
from lmmixup.io.cache import CallCache
from lmmixup.method.rubric import (
    build_rubric_logprob_prompt,
    build_rubric_messages,
    read_rating,
)
from lmmixup.runtime.executor import stage_sizing
from lmmixup.runtime.requests import Request, RequestStage
from lmmixup.stages.judge_scores import (
    ScoreReading,
    cached_distribution,
    logprob_rating,
    score_reading,
)

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


def judge_params(cfg: RateConfig, attempt: int) -> GenParams:
    """Decoding settings of a generate-mode attempt: greedy for the first attempt of the
    first run, sampled with the attempt's seed for every later one."""
    return GenParams(
        max_new_tokens=cfg.max_new_tokens,
        temperature=0.0 if attempt == 0 else 0.7,
        seed=attempt,
    )


def judge_messages(record: dict, cfg: RateConfig) -> list[dict]:
    """The rubric request about one record (its texts clipped for the judge)."""
    return build_rubric_messages(
        _clip(record["prompt"]), _clip(record["completion"]), rubric_task(record, cfg)
    )


def read_reply(reply: Generation | None, model: str) -> dict | str:
    """The rating a judge's reply gives, or why it gives none (None: never sent)."""
    if reply is None:
        return "not sent: the request cap (max_requests) was reached"
    if not reply.ok:
        return f"judge call failed: {reply.error}"
    rating = read_rating(reply.text)
    if isinstance(rating, str):
        return f"unusable judge reply ({rating}): {reply.text[:120]!r}"
    return rating.to_record(model, "judge-generate")


def judged(record: dict, reading: dict | str) -> dict:
    """The record with the rating `read_reply` read, or its recorded failure."""
    return failed(record, reading) if isinstance(reading, str) else rated(record, reading)


def make_generate_judge(
    generator, cfg: RateConfig, stop: BudgetStop, run_index: int = 0
) -> Callable[[list[dict]], list[dict]]:
    """Batch function: the judge writes JSON ratings; failures are recorded, not defaulted.

    The first attempt of the first run is greedy; every later attempt, including those of a
    re-run (`run_index` > 0), samples with a new seed, so a retry really asks again instead
    of being answered from the call cache.
    """

    def judge(batch: list[dict]) -> list[dict]:
        readings: dict[int, dict | str] = {}
        pending = list(range(len(batch)))
        for attempt in range(run_index * cfg.attempts, (run_index + 1) * cfg.attempts):
            if not pending or stop():
                break
            prompts = [judge_messages(batch[i], cfg) for i in pending]
            try:
                replies = generator.generate(prompts, judge_params(cfg, attempt))
            except RequestBudgetExhausted as exc:
                stop.reason = str(exc)
                replies = exc.results
            for index, reply in zip(pending, replies, strict=True):
                readings[index] = read_reply(reply, generator.name)
            pending = [index for index in pending if isinstance(readings[index], str)]
        return [judged(record, readings.get(i, "not judged")) for i, record in enumerate(batch)]

    return judge


def make_logprob_judge(
    model, cfg: RateConfig, cache: CallCache | None = None, reading: ScoreReading | None = None
) -> Callable[[list[dict]], list[dict]]:
    """Batch function: expected Overall from the score-token probabilities (by default read
    as the model's vocabulary writes them). A row the model could not read (NaN: a server
    judge's failed request) is a failure with the model's reason."""
    if not hasattr(model, "next_token_logprobs"):
        raise ConfigError(
            f"rate.mode=logprob needs an hf judge or an OpenAI-compatible server; '{model.name}' cannot give token probabilities (use mode=generate)"
        )
    reading = reading or score_reading(model)

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
        for record, text, row in zip(batch, texts, dist, strict=True):
            if np.isfinite(row).all():
                rating = logprob_rating(row, model.name)
            else:
                rating = model.failure(text)
            out.append(failed(record, rating) if isinstance(rating, str) else rated(record, rating))
        return out

    return judge


def load_judge_fn(
    cfg: RateConfig,
    cache: CallCache | None,
    stop: BudgetStop,
    run_index: int,
    notes: dict | None = None,
):
    """The judge's batch function for `cfg.mode` and the model behind it; `notes` (when
    given) gets the mode used and, where `auto` fell back to generate, why."""
    from lmmixup.backends import load_generator

    notes = {} if notes is None else notes
    if cfg.judge.backend == "openai":
        return _server_judge(cfg, cache, stop, run_index, notes)
    notes["mode"] = cfg.mode
    if cfg.mode == "logprob":  # here judge.backend=hf: RateConfig refuses it for vllm
        from lmmixup.backends.hf import HFChatModel

        judge = cfg.judge
        model = HFChatModel(
            judge.model, dtype=judge.dtype, batch_size=judge.batch_size, device=judge.device
        )
        return make_logprob_judge(model, cfg, cache), model
    generator = load_generator(cfg.judge, cache)
    return make_generate_judge(generator, cfg, stop, run_index), generator


def _server_judge(
    cfg: RateConfig, cache: CallCache | None, stop: BudgetStop, run_index: int, notes: dict
):
    """An openai judge: logprob (asked, or `auto` and the server passed the probe,
    `judge_server.probe`) or generate; `notes` gets the mode and why `auto` fell back."""
    from lmmixup.backends import CachedGenerator
    from lmmixup.backends.openai_chat import load
    from lmmixup.stages.judge_server import SERVER_READING, ServerScorer, probe

    model = load(cfg.judge)
    if cfg.mode != "generate":
        scorer = ServerScorer(model, stop)
        reason = probe(scorer) if cfg.mode == "auto" else None
        if reason is None:
            notes["mode"] = "logprob"
            return make_logprob_judge(scorer, cfg, cache, SERVER_READING), model
        notes["mode_note"] = f"rating with generate: {reason}"
    notes["mode"] = "generate"
    generator = model if cache is None else CachedGenerator(model, cache)
    return make_generate_judge(generator, cfg, stop, run_index), generator


class JudgeStage(RequestStage):
    """The rubric judge as a per-record stage: pool records in, records with `rating` out.

    Built from the rate config, the call cache's path (None: no cache) and `run_index` (how
    many runs of the stage came before: re-runs ask again with new seeds). A failed rating is
    an output line that is not done, so the next run retries it; a spent request cap stops
    the stage after the batch in flight. `close()` reports the mode used (and why `auto`
    fell back to generate), the model's usage, the cache's hits and misses, and why it stopped.

    In generate mode it is a `RequestStage`: an executor that makes the calls itself asks
    one attempt per record and run (the first of this run's `attempts`; an unusable reply is
    a recorded failure that the next run asks again, with a new seed).
    """

    description = "rate (judge)"

    def __init__(self, cfg: RateConfig, cache_path: Path | None = None, run_index: int = 0):
        self.cfg = cfg
        self.cache_path = cache_path
        self.run_index = run_index
        # a server judge: one record per call, `concurrency` at once (the server stays busy)
        self.batch_size, self.concurrency = stage_sizing(cfg.judge)
        self._stop = BudgetStop()
        self._cache: CallCache | None = None
        self._judge: Callable[[list[dict]], list[dict]] | None = None
        self._model: Any = None
        self._notes: dict[str, str] = {}

    def open(self) -> None:
        self._stop = BudgetStop()
        self._cache = None if self.cache_path is None else CallCache(self.cache_path)
        self._judge, self._model = load_judge_fn(
            self.cfg, self._cache, self._stop, self.run_index, self._notes
        )

    def process(self, batch: list[dict]) -> list[dict]:
        return self._judge(batch)

    def llm_backend(self) -> BackendConfig | None:
        return self.cfg.judge if self.cfg.mode == "generate" else None

    def open_for_replies(self) -> None:
        self._notes["mode"] = "generate"

    def requests(self, batch: list[dict]) -> list[list[Request]]:
        params = judge_params(self.cfg, self.run_index * self.cfg.attempts)
        return [[Request(judge_messages(record, self.cfg), params)] for record in batch]

    def complete(self, batch: list[dict], replies: list[list[Generation]]) -> list[dict]:
        return [
            judged(record, read_reply(reply, self.cfg.judge.model))
            for record, [reply] in zip(batch, replies, strict=True)
        ]

    def is_done(self, record: dict) -> bool:
        return is_rated(record)

    def should_stop(self) -> bool:
        return self._stop()

    @property
    def stop_reason(self) -> str | None:
        """Why the judge stopped (a spent request cap), None while it may go on."""
        return self._stop.reason

    def close(self) -> dict[str, Any]:
        report: dict[str, Any] = dict(self._notes)
        usage = usage_of(self._model)
        if usage:
            report["usage"] = usage
        if self._stop.reason:
            report["stopped"] = self._stop.reason
        if self._cache is not None:
            report["cache"] = self._cache.stats()
            self._cache.close()
        if hasattr(self._model, "close"):
            self._model.close()
        self._judge = self._model = self._cache = None
        return report
