"""A scripted local server speaking enough of POST /v1/chat/completions for tests.

What each request gets is chosen by the content of its last user message:

1. a queue given with `server.script(content, reply, ...)`: each request with that content
   takes the next reply, and the last reply repeats forever;
2. else a scenario named by `[[fake:NAME]]` anywhere in the content (see SCENARIOS), which
   also advances per distinct content, so a judge prompt that wraps a sample still works;
3. else the server's `default` reply when it has one, else an echo: the reply text is
   "echo: " + the content.

A request's `stop` strings are applied as a server would: the reply text ends before the
first one in it (finish_reason "stop"). `FakeOpenAIServer(stop_reason=True)` acts as vLLM
does and names in each choice's `stop_reason` the stop string that ended the reply, or null
(end of sequence; a reply's own `stop_reason` when scripted); without it, like OpenAI or
llama.cpp, choices carry no `stop_reason`.

A request with `logprobs: true` gets the reply's scripted `logprobs` (see `scores`), at most
`top_logprobs` alternatives per token, or `logprobs: null` when the reply has none (a server
that does not give them). A reply with `echo=True` starts its content with the pre-filled
assistant text of the request, and its logprobs with one entry for it, as llama.cpp does.

Every request is recorded (path, headers, JSON body). Use it as a context manager; on exit
it stops serving, wakes any reply that is still waiting, and joins all its threads.

    with FakeOpenAIServer() as server:
        server.script("hi", error(429, retry_after=1), ok("hello"))
        model = OpenAIChatModel("fake-model", base_url=server.base_url)
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHAT_PATH = "/v1/chat/completions"
HANG_S = 5.0
"""How long a `hang` reply waits before answering; far longer than the tests' client timeout."""

GOOD_JSON = '{"rarity": 4, "complexity": 6, "informativeness": 7, "overall": 8}'
FENCED_JSON = f"Here is my rating:\n```json\n{GOOD_JSON}\n```"
OUT_OF_RANGE_JSON = '{"rarity": 14, "complexity": -3, "informativeness": 0, "overall": 42}'
GARBAGE = "What a lovely example, I would not change a thing."


@dataclass(frozen=True)
class Reply:
    """One scripted answer: an HTTP status, the assistant text, extra headers, a delay.

    For an error status, `text` is the error message; "{api_key}" in it becomes the bearer
    token the request carried (as OpenAI's "Incorrect API key provided: ..." does).
    `stop_reason` is what a server that reports it says when no stop string of the request
    is in the text (None: end of sequence).
    """

    status: int = 200
    text: str = ""
    finish_reason: str = "stop"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    stop_reason: str | int | None = None
    logprobs: tuple[tuple[tuple[str, float], ...], ...] | None = None
    echo: bool = False


def ok(
    text: str = GOOD_JSON, finish_reason: str = "stop", stop_reason: str | int | None = None
) -> Reply:
    """A successful completion with this text."""
    return Reply(text=text, finish_reason=finish_reason, stop_reason=stop_reason)


def scores(alternatives: dict[str, float], echo: bool = False) -> Reply:
    """A one-token reply whose logprobs list `alternatives` (token -> logprob, likeliest
    first); its text is the first of them."""
    listed = tuple(alternatives.items())
    return Reply(text=listed[0][0], finish_reason="length", logprobs=(listed,), echo=echo)


def error(status: int, retry_after: float | None = None, message: str = "") -> Reply:
    """An HTTP error, with a Retry-After header (seconds) when given."""
    headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
    return Reply(status=status, text=message or f"fake error {status}", headers=headers)


DROP = 0
"""The status of a reply that closes the connection without answering."""


def drop() -> Reply:
    """The server closes the connection without a reply (a live server that broke it)."""
    return Reply(status=DROP)


def hang(then: Reply | None = None) -> Reply:
    """A reply that waits HANG_S seconds first (a client with a short timeout gives up)."""
    return replace(then or ok(), delay_s=HANG_S)


SCENARIOS: dict[str, tuple[Reply, ...]] = {
    "json": (ok(),),
    "garbage": (ok(GARBAGE),),
    "fenced-json": (ok(FENCED_JSON),),
    "out-of-range": (ok(OUT_OF_RANGE_JSON),),
    "length": (ok("cut sho", finish_reason="length"),),
    "429-then-ok": (error(429, retry_after=1), ok()),
    "500-then-ok": (error(500), ok()),
    "500-forever": (error(500),),
    "timeout-then-ok": (hang(), ok()),
    "drop-then-ok": (drop(), ok()),
    "drop-forever": (drop(),),
    "400": (error(400),),
    "context-400": (
        error(
            400,
            message="request (900 tokens) exceeds the available context size (512 tokens), try increasing it",
        ),
    ),
    "score-7": (scores({"7": -0.2, "8": -1.9, " 7": -3.0, "6": -4.0}),),
    "401-echo-key": (error(401, message="Incorrect API key provided: {api_key}"),),
}

_DIRECTIVE = re.compile(r"\[\[fake:([a-z0-9-]+)\]\]")


@dataclass(frozen=True)
class RecordedRequest:
    """What the server received (header names in lower case)."""

    path: str
    headers: dict[str, str]
    body: dict


def last_user_content(body: dict) -> str:
    """The text of the last user message of a chat request ("" when there is none)."""
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content", "")
            return content if isinstance(content, str) else json.dumps(content)
    return ""


def stopped(reply: Reply, stops: list[str]) -> Reply:
    """The reply as a server applying the request's stop strings returns it: the text ends
    before the first one in it, finish_reason "stop", stop_reason that string."""
    hits = [(index, stop) for stop in stops if (index := reply.text.find(stop)) >= 0]
    if not hits:
        return reply
    index, stop = min(hits, key=lambda hit: hit[0])
    return replace(reply, text=reply.text[:index], finish_reason="stop", stop_reason=stop)


def _prefill(body: dict) -> str:
    """The pre-filled assistant text of a request ("" when the last message is not one)."""
    messages = body.get("messages") or [{}]
    last = messages[-1]
    return str(last.get("content", "")) if last.get("role") == "assistant" else ""


def _logprobs(body: dict, reply: Reply) -> dict | None:
    """The choice's `logprobs` for a request that asked for them."""
    if not body.get("logprobs") or reply.logprobs is None:
        return None
    top = int(body.get("top_logprobs") or 0)
    tokens = [((_prefill(body), 0.0),)] if reply.echo else []
    entries = []
    for alternatives in [*tokens, *reply.logprobs]:
        token, logprob = alternatives[0]
        listed = [{"token": t, "logprob": lp, "bytes": None} for t, lp in alternatives[:top]]
        entries.append({"token": token, "logprob": logprob, "bytes": None, "top_logprobs": listed})
    return {"content": entries}


def completion_body(body: dict, reply: Reply, number: int, stop_reason: bool = False) -> dict:
    """A chat.completion object for `reply` (with vLLM's `stop_reason` when asked); token
    counts are word counts."""
    stop = body.get("stop") or []
    reply = stopped(reply, [stop] if isinstance(stop, str) else stop)
    prompt_words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    completion_words = len(reply.text.split())
    text = _prefill(body) + reply.text if reply.echo else reply.text
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": reply.finish_reason,
        "logprobs": _logprobs(body, reply),
    }
    if stop_reason:
        choice["stop_reason"] = reply.stop_reason
    return {
        "id": f"chatcmpl-fake-{number}",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", "fake-model"),
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_words,
            "completion_tokens": completion_words,
            "total_tokens": prompt_words + completion_words,
        },
    }


def error_body(reply: Reply, api_key: str) -> dict:
    """An OpenAI-style error object."""
    message = reply.text.replace("{api_key}", api_key)
    return {"error": {"message": message, "type": "fake_error", "code": reply.status}}


def _lower_keys(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in items}


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        owner = self.server.owner
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        headers = _lower_keys(self.headers.items())
        number = owner.record(RecordedRequest(self.path, headers, body))
        if self.path != CHAT_PATH:
            self._send(404, {"error": {"message": f"no route {self.path}"}}, {})
            return
        with owner.in_flight():
            reply = owner.next_reply(last_user_content(body))
            if reply.delay_s and owner.stopping.wait(reply.delay_s):
                return
        if reply.status == DROP:
            self.close_connection = True
            return
        if reply.status == 200:
            payload = completion_body(body, reply, number, owner.stop_reason)
        else:
            payload = error_body(reply, headers.get("authorization", "").removeprefix("Bearer "))
        self._send(reply.status, payload, reply.headers)

    def _send(self, status: int, payload: dict, headers: dict[str, str]) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (its timeout); nothing to answer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Silent: tests read `FakeOpenAIServer.requests` instead of stderr."""


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins every handler thread
    owner: FakeOpenAIServer


class FakeOpenAIServer:
    """The scripted server on 127.0.0.1 (a free port); see the module docstring."""

    def __init__(self, stop_reason: bool = False, default: Reply | None = None) -> None:
        self.stop_reason = stop_reason
        self.default = default
        self.requests: list[RecordedRequest] = []
        self.stopping = threading.Event()
        self.max_in_flight = 0
        self._in_flight = 0
        self._scripts: dict[str, list[Reply]] = {}
        self._lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """The URL to give an OpenAI client, ending in /v1."""
        assert self._httpd is not None, "the server is not running"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def count(self) -> int:
        """How many requests arrived."""
        with self._lock:
            return len(self.requests)

    def requests_for(self, content: str) -> list[RecordedRequest]:
        """The requests whose last user message was `content`."""
        with self._lock:
            return [r for r in self.requests if last_user_content(r.body) == content]

    def script(self, content: str, *replies: Reply) -> None:
        """Queue replies for requests whose last user message is exactly `content`."""
        with self._lock:
            self._scripts[content] = list(replies)

    def record(self, request: RecordedRequest) -> int:
        """Store a request; its 1-based number."""
        with self._lock:
            self.requests.append(request)
            return len(self.requests)

    @contextmanager
    def in_flight(self) -> Iterator[None]:
        """Count a request as being answered (for `max_in_flight`)."""
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def next_reply(self, content: str) -> Reply:
        """The reply for the next request with this last user message."""
        with self._lock:
            queue = self._scripts.get(content)
            if queue is None:
                queue = self._scripts[content] = self._default_queue(content)
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def _default_queue(self, content: str) -> list[Reply]:
        match = _DIRECTIVE.search(content)
        if match is None:
            return [self.default or ok(f"echo: {content}")]
        return list(SCENARIOS[match.group(1)])

    def start(self) -> FakeOpenAIServer:
        """Start serving in a background thread."""
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, release waiting replies, join every thread."""
        assert self._httpd is not None and self._thread is not None
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
