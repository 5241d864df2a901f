"""Stable hashes of JSON values and files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def hash_value(value: Any) -> str:
    """sha256 hex digest of a JSON-serialisable value."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def _update_with_file(digest: Any, path: Path, chunk_size: int) -> None:
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)


def hash_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """sha256 hex digest of a file's bytes.

    A folder (e.g. a saved HF dataset) hashes its entries: each file's and sub-folder's
    relative name, kind and size, and each file's bytes; it never hashes like a file
    (an empty folder is not an empty file).
    """
    path = Path(path)
    digest = hashlib.sha256()
    if not path.is_dir():
        _update_with_file(digest, path, chunk_size)
        return digest.hexdigest()
    digest.update(b"lmmixup-folder\x00")
    for entry in sorted(path.rglob("*")):
        name = entry.relative_to(path).as_posix().encode()
        if entry.is_dir():
            digest.update(b"d\x00" + name + b"\x00")
            continue
        digest.update(b"f\x00" + name + b"\x00" + str(entry.stat().st_size).encode() + b"\x00")
        _update_with_file(digest, entry, chunk_size)
    return digest.hexdigest()
