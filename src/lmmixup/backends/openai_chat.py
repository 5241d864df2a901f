"""Any OpenAI-compatible chat-completions server (OpenAI, vLLM serve, llama.cpp server).

Our own retry policy, bounded concurrency, a hard cap on HTTP requests, usage accounting,
and a quick stop when the server cannot be reached. The requests run on one event loop
(`http_client.EventLoopHTTP`). The API key is read from the environment or a file and sent
in the Authorization header, nowhere else: it is never logged, raised, stored or printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import threading
from dataclasses import dataclass
from pathlib import Path

from lmmixup.backends.base import (
    Generation,
    GenParams,
    Messages,
    RequestBudgetExhausted,
    cut_at_stop,
)
from lmmixup.backends.http_client import EventLoopHTTP, HTTPReply, TransportError
from lmmixup.backends.openai_replies import (
    CONTEXT_FIX,
    context_overflow,
    next_token_reading,
    vendor_args,
)
from lmmixup.backends.sharing import shared_limits
from lmmixup.config import BackendConfig
from lmmixup.errors import ConfigError, LmmixupError

OPENAI_API_URL = "https://api.openai.com/v1"
NO_KEY = "EMPTY"
"""Sent when no key is configured: local servers (vLLM, llama.cpp) started without one accept it."""

_RETRYABLE_STATUS = frozenset({408, 429})
_MAX_REASON_CHARS = 300
UNREACHABLE_AFTER = 3
"""Failed connection attempts in a row (refused, unknown host, no connection in time) after
which the server is taken as unreachable and the call stops."""
CONNECT_TIMEOUT_S = 5.0
"""At most this long to open a connection (the request timeout covers the reply)."""
_USAGE_KEYS = ("requests", "retries", "failures", "context_overflows")
_USAGE_KEYS += ("prompt_tokens", "completion_tokens")


def read_api_key(env_name: str = "OPENAI_API_KEY", key_file: str | None = None) -> str:
    """The API key: the variable `env_name`, else the text of `key_file` (stripped), else NO_KEY."""
    key = os.environ.get(env_name, "").strip()
    if key:
        return key
    if key_file is None:
        return NO_KEY
    try:
        key = Path(key_file).expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"api_key_file {key_file}: cannot read it ({exc.strerror})") from None
    if not key:
        raise ConfigError(f"api_key_file {key_file}: the file is empty")
    return key


class _Budget:
    """A thread-safe count of HTTP requests still allowed (None = no limit)."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self._left = limit
        self._lock = threading.Lock()

    def take(self) -> bool:
        """Take one request ticket; False when none is left."""
        if self._left is None:
            return True
        with self._lock:
            if self._left == 0:
                return False
            self._left -= 1
            return True


@dataclass(frozen=True)
class _Failure:
    """One failed attempt: whether to try again, why it failed, the server's Retry-After, and
    whether no connection to the server could be made at all."""

    retryable: bool
    reason: str
    retry_after_s: float | None = None
    unreachable: bool = False
    context_overflow: bool = False


class _HTTPStatusError(Exception):
    """Internal: the server answered with an HTTP error status."""

    def __init__(self, reply: HTTPReply):
        super().__init__(reply.status)
        self.reply = reply


class _OutOfBudget(Exception):
    """Internal: an item needs a request but the budget is spent."""


class ServerUnreachable(LmmixupError):
    """No connection to the server could be made, several attempts in a row."""

    def __init__(self, base_url: str, reason: str):
        super().__init__(
            f"cannot reach the server at {base_url}: {UNREACHABLE_AFTER} attempts in a row "
            f"failed, the last with {reason}; start the server or correct base_url "
            "(--base-url), then re-run"
        )


def _retry_after_seconds(headers) -> float | None:
    """The server's wait in seconds: `retry-after-ms`, else a numeric `retry-after` (no dates)."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            return max(0.0, float(headers[name]) / scale)
        except (KeyError, ValueError):
            continue
    return None


def _status_message(body: object) -> str:
    """The server's own error message, when its body has one."""
    if isinstance(body, dict):
        detail = body.get("error", body)
        message = detail.get("message") if isinstance(detail, dict) else None
        if isinstance(message, str):
            return message
    return ""


def _classify(error: Exception) -> _Failure:
    """Retry on timeouts, connection errors, 408, 429 and 5xx; nothing else."""
    if isinstance(error, TransportError):
        return _Failure(True, error.reason, unreachable=error.unreachable)
    assert isinstance(error, _HTTPStatusError)
    reply = error.reply
    message = _status_message(reply.body)
    reason = f"HTTP {reply.status}: {message}" if message else f"HTTP {reply.status}"
    if context_overflow(reply.status, reply.body):
        return _Failure(False, reason, context_overflow=True)
    retryable = reply.status in _RETRYABLE_STATUS or reply.status >= 500
    return _Failure(retryable, reason, _retry_after_seconds(reply.headers))


class OpenAIChatModel:
    """A chat model behind an OpenAI-compatible `/chat/completions` endpoint.

    `generate` returns one Generation per prompt, in input order. Every request runs on the
    model's one event loop, which holds at most `concurrency` of them in flight: calls from
    several threads (a stage streaming one record per call) share those slots. Timeouts,
    connection errors, HTTP 408, 429 and 5xx are retried up to `max_retries` times with
    exponential backoff and jitter (a numeric Retry-After header, capped at
    `retry_after_cap_s`, is waited instead); other errors are not. An item that still fails
    becomes `Generation(text="", finish_reason="error", error=reason)`: the batch never
    raises for it.

    Unreachable server: when `UNREACHABLE_AFTER` attempts in a row (over all items) cannot
    even connect (connection refused, unknown host, no connection within
    `CONNECT_TIMEOUT_S`), `generate` stops waiting and raises ServerUnreachable naming the
    URL. Any reply from the server, an HTTP error included, resets the count: a live server's
    429s and 5xx keep their retries.

    Stop strings: a reply must say whether it ended on one of `params.stop` (finish_reason
    "stop") or at end-of-sequence ("eos"). vLLM says so in `stop_reason`; other servers
    (OpenAI, llama.cpp) answer "stop" for both. So the stop strings are sent only once the
    server has shown `stop_reason` in a reply; until then the server writes on to its own end
    and the text is cut here before the first stop string. A reply to a request with stop
    strings that does not name its stop is asked again without them.

    Request cap: every HTTP attempt, retries included, takes one ticket from `max_requests`
    for the life of the object. An item that needs a request when none is left gets none;
    once all items of the call have ended, `generate` raises RequestBudgetExhausted whose
    `.results` holds the Generations finished and None for the rest.

    `base_url` is the server's URL ending in /v1 (None: $OPENAI_BASE_URL, else OpenAI's API).
    The API key comes from the variable `api_key_env`, else from `api_key_file`; with
    neither, the placeholder "EMPTY" is sent, which key-less local servers accept.

    `usage` counts requests, retries, failures (items that ended in error) and tokens.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        api_key_file: str | None = None,
        concurrency: int = 8,
        max_requests: int | None = None,
        max_retries: int = 5,
        timeout_s: float = 120.0,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 30.0,
        retry_after_cap_s: float = 60.0,
    ):
        self._api_key = read_api_key(api_key_env, api_key_file)
        self.name = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_API_URL).rstrip(
            "/"
        )
        self.connect_timeout_s = min(timeout_s, CONNECT_TIMEOUT_S)
        self.fingerprint = f"openai:{self.base_url}:{model}"
        shared = shared_limits()  # set by an executor whose workers share this model
        self.concurrency = shared.concurrency(concurrency) if shared else concurrency
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_cap_s = retry_after_cap_s
        self.usage = dict.fromkeys(_USAGE_KEYS, 0)
        self._budget = (
            shared.budget(max_requests, self.fingerprint)
            if shared and max_requests is not None
            else _Budget(max_requests)
        )
        self._http = EventLoopHTTP(
            self.base_url,
            {"Authorization": f"Bearer {self._api_key}"},
            connections=self.concurrency,
            timeout_s=timeout_s,
            connect_timeout_s=self.connect_timeout_s,
        )
        self._usage_lock = threading.Lock()
        self._jitter = random.Random()
        self._connect_failures = 0
        self._unreachable_reason = ""
        self._given_up = False  # the server is taken as unreachable: every call stops
        self._names_stop = False  # the server names the stop that ended a reply (`stop_reason`)
        # made on the loop by the first request: the `concurrency` slots, and the event that
        # ends a retry's wait once the server is given up
        self._slots: asyncio.Semaphore | None = None
        self._giving_up: asyncio.Event | None = None

    def __repr__(self) -> str:
        return f"OpenAIChatModel(model={self.name!r}, base_url={self.base_url!r})"

    def __enter__(self) -> OpenAIChatModel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the event loop and close the connections (requests in flight are dropped)."""
        self._http.close()
        self._slots = self._giving_up = None

    def generate(
        self, prompts: list[Messages], params: GenParams, *, top_logprobs: int = 0
    ) -> list[Generation]:
        """Reply to each message list, in input order (see the class docstring for failures).
        With `top_logprobs`, each reply's `meta["logprobs"]` holds the server's `logprobs`
        (that many alternatives per token), or None when it sent none. On an error or an
        interrupt, this call's requests still on the loop are cancelled."""
        if not prompts:
            return []
        request = self._request_args(params, top_logprobs)
        prefix = params.assistant_prefix
        if prefix:
            prompts = [
                [*messages, {"role": "assistant", "content": prefix}] for messages in prompts
            ]
        futures = [self._http.submit(self._complete(m, request, params.stop)) for m in prompts]
        try:
            results = [future.result() for future in futures]
        finally:
            for future in futures:
                future.cancel()
        if prefix:
            results = [_prefixed(result, prefix) for result in results]
        if any(result is None for result in results):
            raise RequestBudgetExhausted(results, self._budget.limit)
        return results  # type: ignore[return-value]

    def _request_args(self, params: GenParams, top_logprobs: int = 0) -> dict:
        """The chat-completions fields for these decoding settings (stop strings apart)."""
        args: dict = {
            "model": self.name,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": params.seed,
        }
        args |= vendor_args(self.base_url, params.repetition_penalty, bool(params.assistant_prefix))
        if top_logprobs:
            args |= {"logprobs": True, "top_logprobs": top_logprobs}
        return args

    def next_token_top_logprobs(
        self, prompts: list[Messages], prefix: str, top_k: int = 20
    ) -> list[dict[str, float] | str]:
        """For each message list, with the assistant turn pre-filled with `prefix`: log P of
        the `top_k` likeliest next tokens (token text -> logprob, as the server lists them),
        or why there are none (a failed request, a reply without logprobs). One greedy
        request of one token each, under the same retries, request cap (RequestBudgetExhausted,
        whose `.results` holds these readings and None) and unreachable check as `generate`.
        """
        params = GenParams(max_new_tokens=1, temperature=0.0, assistant_prefix=prefix)
        try:
            replies: list = self.generate(prompts, params, top_logprobs=top_k)
        except RequestBudgetExhausted as exc:
            readings = [next_token_reading(reply, prefix) for reply in exc.results]
            raise RequestBudgetExhausted(readings, exc.limit) from None  # type: ignore[arg-type]
        return [next_token_reading(reply, prefix) for reply in replies]

    async def _complete(
        self, messages: Messages, request: dict, stops: tuple[str, ...]
    ) -> Generation | None:
        """One item with retries, holding one of the `concurrency` slots while it is sent;
        None when the request budget ran out before it ended. Raises ServerUnreachable once
        the server is taken as unreachable."""
        if self._slots is None:
            self._slots, self._giving_up = asyncio.Semaphore(self.concurrency), asyncio.Event()
        attempt = 0
        while True:
            self._raise_if_unreachable()
            try:
                async with self._slots:
                    generation = await self._attempt(messages, request, stops, attempt)
            except _OutOfBudget:
                return None
            except (TransportError, _HTTPStatusError) as error:
                failure = _classify(error)
            else:
                self._note_connection(None)
                return generation
            self._note_connection(failure)
            self._raise_if_unreachable()
            if not failure.retryable or attempt >= self.max_retries:
                self._count(failures=1, context_overflows=int(failure.context_overflow))
                fix = f" -- {CONTEXT_FIX}" if failure.context_overflow else ""
                return Generation("", "error", error=self._redact(failure.reason) + fix)
            await self._pause(self._delay(attempt, failure.retry_after_s))
            attempt += 1
            self._count(retries=1)

    async def _pause(self, seconds: float) -> None:
        """Wait `seconds` before a retry, or less once the server is given up."""
        assert self._giving_up is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._giving_up.wait(), seconds)

    def _note_connection(self, failure: _Failure | None) -> None:
        """Count attempts in a row that could not connect; any reply from the server (None,
        or an HTTP error) resets the count. At UNREACHABLE_AFTER the server is given up."""
        with self._usage_lock:
            if failure is None or not failure.unreachable:
                self._connect_failures = 0
                return
            self._connect_failures += 1
            if self._connect_failures >= UNREACHABLE_AFTER and not self._given_up:
                self._unreachable_reason = self._redact(failure.reason)
                self._given_up = True
                if self._giving_up is not None:  # on the loop: wake the retries' waits
                    self._giving_up.set()

    def _raise_if_unreachable(self) -> None:
        if self._given_up:
            raise ServerUnreachable(self.base_url, self._unreachable_reason)

    async def _take_ticket(self) -> bool:
        """One ticket of the request budget; a budget shared across processes (the Ray
        executor's) answers over the network, so it is asked off the loop."""
        if isinstance(self._budget, _Budget):
            return self._budget.take()
        return await asyncio.to_thread(self._budget.take)

    async def _attempt(
        self, messages: Messages, request: dict, stops: tuple[str, ...], attempt: int
    ) -> Generation:
        """Send one HTTP request (taking a budget ticket) and read its reply; a reply that
        does not say how it ended is asked again without stop strings (class docstring)."""
        while True:
            if not await self._take_ticket():
                raise _OutOfBudget
            self._count(requests=1)
            send_stops = bool(stops) and self._names_stop
            payload = {**request, "messages": messages}
            if send_stops:
                payload["stop"] = list(stops)
            reply = await self._http.post("/chat/completions", payload)
            if reply.status >= 400:
                raise _HTTPStatusError(reply)
            body = reply.body if isinstance(reply.body, dict) else {}
            usage = body.get("usage") or {}
            prompt_tokens = usage.get("prompt_tokens") or 0
            completion_tokens = usage.get("completion_tokens") or 0
            self._count(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
            choices = body.get("choices")
            if not choices or not isinstance(choices[0], dict):
                self._count(failures=1)
                what = "has no choices" if reply.is_json else "is not JSON"
                return Generation("", "error", error=f"the server's reply {what}")
            choice = choices[0]
            self._names_stop = "stop_reason" in choice
            ending = _ending(choice, stops, send_stops)
            if ending is not None:
                text, finish_reason, stop_string = ending
                return Generation(
                    text=text,
                    finish_reason=finish_reason,
                    completion_tokens=completion_tokens,
                    prompt_tokens=prompt_tokens,
                    stop_string=stop_string,
                    meta={"attempts": attempt + 1, "logprobs": choice.get("logprobs")},
                )

    def _delay(self, attempt: int, retry_after_s: float | None) -> float:
        """Seconds to wait before retry `attempt + 1`: Retry-After (capped), else backoff."""
        if retry_after_s is not None:
            return min(retry_after_s, self.retry_after_cap_s)
        backoff = min(self.backoff_max_s, self.backoff_base_s * 2**attempt)
        return backoff * self._jitter.uniform(0.5, 1.0)

    def _count(self, **amounts: int) -> None:
        with self._usage_lock:
            for key, amount in amounts.items():
                self.usage[key] += amount

    def _redact(self, text: str) -> str:
        """A short, key-free version of an error reason."""
        key = self._api_key
        if key and key != NO_KEY:
            text = text.replace(key, "[api key]")
        return text[:_MAX_REASON_CHARS]


def load(cfg: BackendConfig) -> OpenAIChatModel:
    """The openai backend from its config section."""
    if cfg.model.startswith("bundled:"):
        raise ConfigError(
            "openai backend: set `model` to the server's model name, not a bundled model"
        )
    return OpenAIChatModel(
        cfg.model,
        base_url=cfg.base_url,
        api_key_env=cfg.api_key_env,
        api_key_file=cfg.api_key_file,
        concurrency=cfg.concurrency,
        max_requests=cfg.max_requests,
        max_retries=cfg.max_retries,
        timeout_s=cfg.timeout_s,
    )


def _ending(
    choice: dict, stops: tuple[str, ...], sent_stops: bool
) -> tuple[str, str, str | None] | None:
    """A choice's text (cut before the first stop string in it), finish reason and stop string.

    finish_reason "stop" means one of `stops` ended the reply, "eos" that the model ended it;
    vLLM's `stop_reason` tells them apart (null or a token id: end-of-sequence). None when it
    cannot be told: stop strings were sent and the server does not name the one it hit.
    """
    message = choice.get("message") or {}
    text, stop = cut_at_stop(message.get("content") or "", stops)
    if stop is not None:
        return text, "stop", stop
    reason = choice.get("finish_reason") or "stop"
    if reason != "stop":
        return text, reason, None
    if "stop_reason" in choice:
        named = choice["stop_reason"]
        return (text, "stop", named) if named in stops else (text, "eos", None)
    return None if sent_stops else (text, "eos", None)


def _prefixed(result: Generation | None, prefix: str) -> Generation | None:
    """The reply with the pre-filled prefix put back in front (servers return only the rest)."""
    if result is None or not result.ok or result.text.startswith(prefix):
        return result
    result.text = prefix + result.text
    return result
