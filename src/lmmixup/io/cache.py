"""A disk cache for model calls, keyed by a hash of (model, prompt, parameters).

SQLite in WAL mode: safe across threads and processes, and a crash never leaves a
half-written entry (a killed process loses no stored entry; a power cut may lose the last
few, which are then asked again). A re-run never pays twice for the same call.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lmmixup.errors import LmmixupError
from lmmixup.hashing import hash_value


def cache_root() -> Path:
    """The cache folder: `$LMMIXUP_CACHE`, else `~/.cache/lmmixup`."""
    root = os.environ.get("LMMIXUP_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "lmmixup"


def call_key(model: str, prompt: Any, params: dict) -> str:
    """The cache key of one model call."""
    return hash_value({"model": model, "prompt": prompt, "params": params})


class CallCache:
    """Persistent map from call key to a JSON value, with hit/miss counters."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else cache_root() / "calls.sqlite"
        self._lock = threading.Lock()
        with self._errors_named():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=60)
            self._db.execute("PRAGMA journal_mode=WAL")
            # no fsync per commit (one per checkpoint): a killed process loses nothing, and
            # many threads storing one reply each do not queue behind the disk
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, value TEXT)")
            self._db.commit()
        self.hits = 0
        self.misses = 0

    @contextmanager
    def _errors_named(self) -> Iterator[None]:
        """A database error (disk full, read-only, corrupt) as one line naming the cache."""
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            raise LmmixupError(
                f"call cache {self.path}: {exc}; free space there (or fix its permissions, or "
                "set LMMIXUP_CACHE to another folder) and re-run"
            ) from exc

    def get(self, key: str) -> Any | None:
        """The cached value, or None when the call was never made."""
        with self._lock, self._errors_named():
            row = self._db.execute("SELECT value FROM calls WHERE key = ?", (key,)).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
            return json.loads(row[0])

    def put(self, key: str, value: Any) -> None:
        """Store a call's result (overwrites an older value for the same key)."""
        text = json.dumps(value, ensure_ascii=False)
        with self._lock, self._errors_named():
            self._db.execute("INSERT OR REPLACE INTO calls (key, value) VALUES (?, ?)", (key, text))
            self._db.commit()

    def put_many(self, items: dict[str, Any]) -> None:
        """Store several results in one transaction."""
        rows = [(key, json.dumps(value, ensure_ascii=False)) for key, value in items.items()]
        with self._lock, self._errors_named():
            self._db.executemany("INSERT OR REPLACE INTO calls (key, value) VALUES (?, ?)", rows)
            self._db.commit()

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "path": str(self.path)}

    def count_use(self, stats: dict) -> None:
        """Add the hits and misses of another handle's `stats()` to this one's (e.g. those of
        the handle a stage opened on the same file in the process that ran it)."""
        self.hits += stats["hits"]
        self.misses += stats["misses"]

    def close(self) -> None:
        with self._lock:
            self._db.close()
