"""One embedding call for the texts many threads ask for at about the same time.

A streaming stage embeds a few texts per record from many threads. Embedding them one call
each pays the model's per-call cost every time; `CoalescingEncoder` queues each request, and
whichever thread runs the next call embeds everything queued by then, handing each thread its
own rows. One call runs at a time.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

import numpy as np

from lmmixup.types import Embedder


class CoalescingEncoder:
    """An embedder whose concurrent `encode` calls share model calls (see the module doc)."""

    def __init__(self, inner: Embedder):
        self.inner = inner
        self._call = threading.Lock()  # one model call at a time
        self._queue_lock = threading.Lock()
        self._queue: list[tuple[list[str], Future]] = []

    @property
    def waiting(self) -> int:
        """How many requests are queued for the next call."""
        with self._queue_lock:
            return len(self._queue)

    def encode(self, texts: list[str]) -> np.ndarray:
        """The vectors of `texts`, embedded in a call shared with other threads' texts."""
        mine: Future = Future()
        with self._queue_lock:
            self._queue.append((list(texts), mine))
        with self._call:
            if not mine.done():  # no earlier call took it: embed all that is queued
                self._embed_queued()
        return mine.result()

    def _embed_queued(self) -> None:
        with self._queue_lock:
            queued, self._queue = self._queue, []
        try:
            vectors = self.inner.encode([text for texts, _ in queued for text in texts])
        except BaseException as exc:
            for _, future in queued:
                future.set_exception(exc)
            return
        start = 0
        for texts, future in queued:
            future.set_result(vectors[start : start + len(texts)])
            start += len(texts)
