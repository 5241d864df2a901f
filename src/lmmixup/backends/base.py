"""What every text generator offers, and the call cache wrapped around any of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

from lmmixup.errors import LmmixupError
from lmmixup.io.cache import CallCache, call_key

Messages = list[dict]


@dataclass(frozen=True)
class GenParams:
    """Decoding settings; part of every cache key."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0
    # Text the reply is pre-filled with (the model continues it); the returned text starts
    # with it. Steers models that do not follow a format by themselves.
    assistant_prefix: str = ""


@dataclass
class Generation:
    """One reply: its text, why it ended, tokens used, the error if any.

    `finish_reason` is one of:

    - stop: one of the request's stop strings ended the reply; `stop_string` says which. The
      text ends before it (as OpenAI-compatible servers return it);
    - eos: the model ended the reply itself (its end-of-sequence token, or a stop the request
      did not ask for);
    - length: `max_new_tokens` ran out;
    - error: the backend failed (`error` says why);

    or another reason a server gave (e.g. content_filter).
    """

    text: str
    finish_reason: str
    completion_tokens: int = 0
    prompt_tokens: int = 0
    error: str | None = None
    stop_string: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


def usage_of(generator: object) -> dict | None:
    """A server backend's usage counts (requests, failures, tokens), through a call cache
    around it; None for backends that keep none."""
    usage = getattr(getattr(generator, "inner", generator), "usage", None)
    return dict(usage) if usage else None


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, str | None]:
    """The text before the first stop string in it, and that stop string (None: none is in it)."""
    found = [(index, stop) for stop in stops if stop and (index := text.find(stop)) >= 0]
    if not found:
        return text, None
    index, stop = min(found, key=lambda hit: hit[0])
    return text[:index], stop


class RequestBudgetExhausted(LmmixupError):
    """The model's `max_requests` cap is reached; `.results` holds what this call finished.

    `.results` has one entry per prompt, in input order: a Generation for each item that
    completed (successfully or as an error Generation), None for each item that could not
    complete because no request was left. Save the Generations and stop; a re-run does the rest.
    """

    def __init__(self, results: list[Generation | None], limit: int):
        self.results = results
        self.limit = limit
        done = sum(result is not None for result in results)
        super().__init__(
            f"request budget spent: max_requests={limit} reached; "
            f"{done} of {len(results)} items of this batch finished"
        )


class Generator(Protocol):
    """A chat model: a batch of message lists in, one Generation each out (same order)."""

    name: str
    fingerprint: str

    def generate(self, prompts: list[Messages], params: GenParams) -> list[Generation]: ...


class CachedGenerator:
    """Serves repeated calls from the disk cache; only successful replies are stored.

    Paid backends (those with a `concurrency`) are called in chunks of that size and each
    chunk is cached as soon as it returns, so a crash loses at most the calls in flight.
    Stages that wait on a server call it for one record at a time from many threads (the
    executor streams them), so there no chunk ever waits for another.

    Replies cached before `Generation.stop_string` existed said "stop" for a stop string and
    for end-of-sequence alike. Such a reply to a call without stop strings can only have
    ended at end-of-sequence and is read as "eos"; one to a call with stop strings cannot be
    told apart, so it is asked again (and its entry replaced), never guessed.
    """

    def __init__(self, inner: Generator, cache: CallCache):
        self.inner = inner
        self.cache = cache
        self.name = inner.name
        self.fingerprint = inner.fingerprint
        self.chunk_size = getattr(inner, "concurrency", None)

    def close(self) -> None:
        """Close the model behind the cache, when it has anything to close."""
        if hasattr(self.inner, "close"):
            self.inner.close()

    def generate(self, prompts: list[Messages], params: GenParams) -> list[Generation]:
        param_dict = asdict(params)
        keys = [call_key(self.fingerprint, prompt, param_dict) for prompt in prompts]
        results: list[Generation | None] = []
        for key in keys:
            hit = self.cache.get(key)
            results.append(None if hit is None else _cached_generation(hit, params))
        missing = [i for i, result in enumerate(results) if result is None]
        step = self.chunk_size or max(len(missing), 1)
        for start in range(0, len(missing), step):
            chunk = missing[start : start + step]
            try:
                fresh = self.inner.generate([prompts[i] for i in chunk], params)
            except RequestBudgetExhausted as exc:
                self._store(keys, chunk, exc.results, results)
                raise RequestBudgetExhausted(results, exc.limit) from None
            self._store(keys, chunk, fresh, results)
        return results  # type: ignore[return-value]

    def _store(self, keys: list[str], chunk: list[int], fresh: list, results: list) -> None:
        """Put fresh replies into their places in `results`; cache the successful ones."""
        for i, generation in zip(chunk, fresh, strict=True):
            results[i] = generation
        done = {
            keys[i]: _cacheable(g)
            for i, g in zip(chunk, fresh, strict=True)
            if g is not None and g.ok
        }
        self.cache.put_many(done)


def _cached_generation(entry: dict, params: GenParams) -> Generation | None:
    """The Generation a cache entry holds; None when it must be asked again (see CachedGenerator)."""
    if "stop_string" not in entry and entry.get("finish_reason") == "stop":
        if params.stop:
            return None
        entry = {**entry, "finish_reason": "eos"}
    return Generation(**entry, meta={"cached": True})


def _cacheable(generation: Generation) -> dict:
    data = asdict(generation)
    data.pop("meta")
    return data
