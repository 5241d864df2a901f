"""Reading what OpenAI-compatible servers put in a reply besides its text.

- `top_logprobs`: the next token's alternatives after a pre-filled assistant turn, from a
  chat completion's `logprobs`; servers that echo the pre-filled text (as tokens before the
  generated one) are read past it.
- `context_overflow`: whether an HTTP 400 says the prompt does not fit the server's
  context (llama.cpp, vLLM and OpenAI word it differently), and the message naming the fix.
- `vendor_args`: the request fields only some servers understand (repetition penalty,
  continuing a pre-filled turn), by server kind.
"""

from __future__ import annotations

import math
from urllib.parse import urlparse

from lmmixup.backends.base import Generation
from lmmixup.errors import ConfigError

NO_LOGPROBS = (
    "the server gave no logprobs for this request (it does not support `logprobs`/"
    "`top_logprobs` on chat completions); rate with --mode generate"
)

# How the servers say a prompt is too long (lower case): llama.cpp ("request (N tokens)
# exceeds the available context size (M tokens), try increasing it", type
# exceed_context_size_error), vLLM ("This model's maximum context length is N tokens ...",
# v1: "... is longer than the maximum model length of N"), OpenAI (code
# context_length_exceeded).
_CONTEXT_SIGNS = (
    "exceeds the available context size",
    "exceed_context_size",
    "larger than the max context size",
    "maximum context length",
    "longer than the maximum model length",
    "context_length_exceeded",
)

CONTEXT_FIX = (
    "the prompt is longer than the server's context, so retrying cannot help: raise the "
    "server's context (llama.cpp: -c, which is split across its -np slots, e.g. -c 4096 -np 8 "
    "is 512 tokens a slot; vLLM: --max-model-len) or send shorter prompts "
    "(distill.max_member_chars for the distiller; the judge sees at most 4,000 characters of "
    "each field), then re-run"
)

OPENAI_HOST = "api.openai.com"


def context_overflow(status: int, body: object) -> bool:
    """Whether an HTTP error says the prompt is longer than the server's context."""
    if status not in (400, 413):
        return False
    text = str(body).lower()
    return any(sign in text for sign in _CONTEXT_SIGNS)


def is_openai_api(base_url: str) -> bool:
    """Whether the URL is OpenAI's own API (which refuses fields it does not know)."""
    host = urlparse(base_url).hostname or ""
    return host == OPENAI_HOST or host.endswith("." + OPENAI_HOST)


def vendor_args(base_url: str, repetition_penalty: float, continue_prefix: bool) -> dict:
    """The extra request fields for this server: the repetition penalty under both names
    (vLLM reads `repetition_penalty`, llama.cpp `repeat_penalty`; each ignores the other)
    and vLLM's fields for continuing a pre-filled assistant turn (llama.cpp reads them too).

    OpenAI's API answers HTTP 400 to fields it does not know and has no repetition penalty:
    a penalty other than 1.0 is refused here, before any request; the prefill fields are not
    sent (it does not continue a pre-filled turn: it writes a new one).
    """
    openai_api = is_openai_api(base_url)
    extra: dict = {}
    if repetition_penalty != 1.0:
        if openai_api:
            raise ConfigError(
                f"repetition_penalty={repetition_penalty:g}: OpenAI's API has no repetition "
                "penalty (it refuses the field); set it to 1.0 for this backend "
                "(e.g. --set distill.repetition_penalty=1.0)"
            )
        extra |= {"repetition_penalty": repetition_penalty, "repeat_penalty": repetition_penalty}
    if continue_prefix and not openai_api:
        extra |= {"continue_final_message": True, "add_generation_prompt": False}
    return extra


def _entries(logprobs: object) -> list[dict] | None:
    """The per-token entries of a choice's `logprobs` (None when the server sent none)."""
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    return content if isinstance(content, list) and content else None


def _after_echo(entries: list[dict], prefix: str) -> dict:
    """The entry of the first generated token: past the entries that spell the pre-filled
    `prefix` when the server echoed it (compared without spaces)."""
    target = "".join(prefix.split())
    spelled = ""
    for index, entry in enumerate(entries):
        if spelled == target and index:
            return entry
        spelled += "".join((entry.get("token") or "").split())
        if not target.startswith(spelled):
            break
    return entries[0]


def top_logprobs(logprobs: object, prefix: str) -> dict[str, float] | str:
    """log P(token) of each alternative a choice's `logprobs` lists for the token after
    `prefix` (the same text listed twice, from two token ids, adds up), or why there are none."""
    entries = _entries(logprobs)
    if entries is None:
        return NO_LOGPROBS
    entry = _after_echo(entries, prefix)
    alternatives = entry.get("top_logprobs") or [entry]
    found: dict[str, float] = {}
    for alternative in alternatives:
        token, logprob = alternative.get("token"), alternative.get("logprob")
        if not isinstance(token, str) or not isinstance(logprob, int | float):
            continue
        if not math.isfinite(logprob):
            continue
        found[token] = float(logprob) if token not in found else _log_add(found[token], logprob)
    return found if found else NO_LOGPROBS


def _log_add(a: float, b: float) -> float:
    high, low = max(a, b), min(a, b)
    return high + math.log1p(math.exp(low - high))


def next_token_reading(reply: Generation | None, prefix: str) -> dict[str, float] | str | None:
    """The next-token alternatives in a one-token reply requested with top logprobs; a failed
    reply's error; None for an item the request cap left unsent."""
    if reply is None:
        return None
    if not reply.ok:
        return f"the request failed: {reply.error}"
    return top_logprobs(reply.meta.get("logprobs"), prefix)
