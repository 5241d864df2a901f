"""Any OpenAI-compatible chat-completions server (OpenAI, vLLM serve, llama.cpp server).

Our own retry policy (the client's retries are off), bounded concurrency, a hard cap on
HTTP requests, and usage accounting. The API key is read from the environment or a file,
handed to the client and nowhere else: it is never logged, raised, stored or printed.
"""

from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import openai

from lmmixup.backends.base import Generation, GenParams, Messages, RequestBudgetExhausted
from lmmixup.config import BackendConfig
from lmmixup.errors import ConfigError

NO_KEY = "EMPTY"
"""Sent when no key is configured: local servers (vLLM, llama.cpp) started without one accept it."""

_RETRYABLE_STATUS = frozenset({408, 429})
_MAX_REASON_CHARS = 300


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
    """One failed attempt: whether to try again, why it failed, and the server's Retry-After."""

    retryable: bool
    reason: str
    retry_after_s: float | None = None


class _OutOfBudget(Exception):
    """Internal: an item needs a request but the budget is spent."""


def _retry_after_seconds(error: openai.APIStatusError) -> float | None:
    """The server's wait in seconds: `retry-after-ms`, else a numeric `retry-after` (no dates)."""
    headers = error.response.headers
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            return max(0.0, float(headers[name]) / scale)
        except (KeyError, ValueError):
            continue
    return None


def _status_message(error: openai.APIStatusError) -> str:
    """The server's own error message, when its body has one."""
    body = error.body
    if isinstance(body, dict):
        detail = body.get("error", body)
        message = detail.get("message") if isinstance(detail, dict) else None
        if isinstance(message, str):
            return message
    return ""


def _classify(error: openai.APIError, timeout_s: float) -> _Failure:
    """Retry on timeouts, connection errors, 408, 429 and 5xx; nothing else."""
    if isinstance(error, openai.APITimeoutError):
        return _Failure(True, f"timeout after {timeout_s:g} s")
    if isinstance(error, openai.APIConnectionError):
        cause = type(error.__cause__).__name__ if error.__cause__ else "unknown cause"
        return _Failure(True, f"connection error ({cause})")
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        message = _status_message(error)
        reason = f"HTTP {status}: {message}" if message else f"HTTP {status}"
        retryable = status in _RETRYABLE_STATUS or status >= 500
        return _Failure(retryable, reason, _retry_after_seconds(error))
    return _Failure(False, f"{type(error).__name__}: {error}")


class OpenAIChatModel:
    """A chat model behind an OpenAI-compatible `/chat/completions` endpoint.

    `generate` sends up to `concurrency` requests at once and returns one Generation per
    prompt, in input order. Timeouts, connection errors, HTTP 408, 429 and 5xx are retried up
    to `max_retries` times with exponential backoff and jitter (a numeric Retry-After header,
    capped at `retry_after_cap_s`, is waited instead); other errors are not. An item that
    still fails becomes `Generation(text="", finish_reason="error", error=reason)`: the batch
    never raises for it.

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
        self._client = openai.OpenAI(
            api_key=read_api_key(api_key_env, api_key_file),
            base_url=base_url,
            timeout=timeout_s,
            max_retries=0,
        )
        self.name = model
        self.base_url = str(self._client.base_url).rstrip("/")
        self.fingerprint = f"openai:{self.base_url}:{model}"
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_cap_s = retry_after_cap_s
        self.usage = dict.fromkeys(
            ("requests", "retries", "failures", "prompt_tokens", "completion_tokens"), 0
        )
        self._budget = _Budget(max_requests)
        self._usage_lock = threading.Lock()
        self._jitter = random.Random()

    def __repr__(self) -> str:
        return f"OpenAIChatModel(model={self.name!r}, base_url={self.base_url!r})"

    def __enter__(self) -> OpenAIChatModel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def generate(self, prompts: list[Messages], params: GenParams) -> list[Generation]:
        """Reply to each message list, in input order (see the class docstring for failures)."""
        if not prompts:
            return []
        request = self._request_args(params)
        prefix = params.assistant_prefix
        if prefix:
            prompts = [
                [*messages, {"role": "assistant", "content": prefix}] for messages in prompts
            ]
        workers = min(self.concurrency, len(prompts))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-chat")
        try:
            results = list(pool.map(lambda messages: self._complete(messages, request), prompts))
        finally:
            # on an interrupt, items not yet started are dropped; those in flight finish
            pool.shutdown(wait=True, cancel_futures=True)
        if prefix:
            results = [_prefixed(result, prefix) for result in results]
        if any(result is None for result in results):
            raise RequestBudgetExhausted(results, self._budget.limit)
        return results  # type: ignore[return-value]

    def _request_args(self, params: GenParams) -> dict:
        """The chat-completions arguments for these decoding settings."""
        args: dict = {
            "model": self.name,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": params.seed,
        }
        if params.stop:
            args["stop"] = list(params.stop)
        extra: dict = {}
        if params.repetition_penalty != 1.0:
            extra["repetition_penalty"] = params.repetition_penalty
        if params.assistant_prefix:
            # vLLM's way to continue a pre-filled assistant turn; other servers may ignore it.
            extra |= {"continue_final_message": True, "add_generation_prompt": False}
        if extra:
            args["extra_body"] = extra
        return args

    def _complete(self, messages: Messages, request: dict) -> Generation | None:
        """One item with retries; None when the request budget ran out before it ended."""
        attempt = 0
        while True:
            try:
                return self._attempt(messages, request, attempt)
            except _OutOfBudget:
                return None
            except openai.APIError as error:
                failure = _classify(error, self.timeout_s)
            if not failure.retryable or attempt >= self.max_retries:
                self._count(failures=1)
                return Generation("", "error", error=self._redact(failure.reason))
            time.sleep(self._delay(attempt, failure.retry_after_s))
            attempt += 1
            self._count(retries=1)

    def _attempt(self, messages: Messages, request: dict, attempt: int) -> Generation:
        """Send one HTTP request (taking a budget ticket) and read its reply."""
        if not self._budget.take():
            raise _OutOfBudget
        self._count(requests=1)
        response = self._client.chat.completions.create(messages=messages, **request)
        usage = response.usage
        prompt_tokens = usage.prompt_tokens if usage else 0
        completion_tokens = usage.completion_tokens if usage else 0
        self._count(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        if not response.choices:
            self._count(failures=1)
            return Generation("", "error", error="the server's reply has no choices")
        choice = response.choices[0]
        return Generation(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason or "stop",
            completion_tokens=completion_tokens,
            prompt_tokens=prompt_tokens,
            meta={"attempts": attempt + 1},
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
        key = self._client.api_key
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


def _prefixed(result: Generation | None, prefix: str) -> Generation | None:
    """The reply with the pre-filled prefix put back in front (servers return only the rest)."""
    if result is None or not result.ok or result.text.startswith(prefix):
        return result
    result.text = prefix + result.text
    return result
