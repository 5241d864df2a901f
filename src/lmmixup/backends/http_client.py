"""JSON over HTTP for many requests at once: one asyncio event loop in a thread of its own,
aiohttp's keep-alive connection pool, and callers in any thread.

The OpenAI-compatible backend keeps hundreds of requests in flight. With a thread per
request and the `openai` package, the client spent about 8 ms of CPU a request; on one
event loop with aiohttp, under 2 ms (docs/BENCHMARKS.md, "Keeping servers busy").
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Coroutine, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from importlib import metadata
from typing import Any, TypeVar

import aiohttp

log = logging.getLogger("lmmixup.http")
"""One INFO line per request; the CLI shows it only with --verbose."""

T = TypeVar("T")


class TransportError(Exception):
    """A request that got no HTTP reply: why, and whether no connection could be made at all
    (`unreachable`: refused, unknown host, no connection in time)."""

    def __init__(self, reason: str, *, unreachable: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.unreachable = unreachable


@dataclass(frozen=True)
class HTTPReply:
    """A server's reply: status, headers (case-insensitive) and body (parsed JSON, or the
    text when it is not JSON)."""

    status: int
    headers: Mapping[str, str]
    body: Any

    @property
    def is_json(self) -> bool:
        return not isinstance(self.body, str)


def _os_reason(error: OSError | None, fallback: str) -> str:
    """An OS error in words: "Connection refused", "Name or service not known"."""
    if error is None:
        return fallback
    if error.errno and error.errno > 0:
        return os.strerror(error.errno)
    return error.strerror or str(error) or fallback


class EventLoopHTTP:
    """POSTs JSON to one server. The loop thread and the connection pool (at most
    `connections` connections, kept alive) start with the first request; `close()` ends both.

    `timeout_s` bounds a whole request, `connect_timeout_s` opening its connection. Proxies
    named in the environment (HTTPS_PROXY, ...) are used, as other HTTP clients do.
    """

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        *,
        connections: int,
        timeout_s: float,
        connect_timeout_s: float,
    ):
        self.base_url = base_url.rstrip("/")
        self.headers = {"User-Agent": f"lmmixup/{metadata.version('lmmixup')}", **headers}
        self.connections = connections
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._session: aiohttp.ClientSession | None = None
        self._lock = threading.Lock()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        """Run `coroutine` on the loop (started on first use); its result as a Future."""
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=self._loop.run_forever, name="lmmixup-http", daemon=True
                )
                self._thread.start()
            return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    async def post(self, path: str, payload: dict) -> HTTPReply:
        """POST `payload` as JSON to base_url + path (on the loop); TransportError when no
        reply came."""
        url = self.base_url + path
        try:
            async with self._open_session().post(url, json=payload) as response:
                raw = await response.read()
                status, headers = response.status, response.headers
        except aiohttp.ConnectionTimeoutError:
            raise TransportError(
                f"no connection within {self.connect_timeout_s:g} s", unreachable=True
            ) from None
        except aiohttp.ClientConnectorError as error:
            reason = _os_reason(error.os_error, str(error))
            raise TransportError(f"connection error ({reason})", unreachable=True) from None
        except TimeoutError:
            raise TransportError(f"timeout after {self.timeout_s:g} s") from None
        except aiohttp.ClientError as error:
            raise TransportError(f"connection error ({error or 'the connection broke'})") from None
        log.info('HTTP Request: POST %s "%d %s"', url, status, response.reason or "")
        text = raw.decode("utf-8", errors="replace")
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        return HTTPReply(status, headers, body)

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on the loop, as aiohttp requires
            self._session = aiohttp.ClientSession(
                headers=self.headers,
                connector=aiohttp.TCPConnector(limit=self.connections),
                timeout=aiohttp.ClientTimeout(
                    total=self.timeout_s, sock_connect=self.connect_timeout_s
                ),
                trust_env=True,
            )
        return self._session

    async def _shut(self) -> None:
        """Cancel the requests still on the loop and close the session."""
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def close(self) -> None:
        """Close the connections and stop the loop thread (requests in flight are dropped)."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shut(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
