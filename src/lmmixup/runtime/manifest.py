"""Stage manifests: reading and writing them, and what a stage's fingerprint says changed.

A fingerprint is the config (and its hash) and the input files' hashes of a stage run. Inputs
are compared by content: the manifest names each by its path relative to a base folder (the
run directory, or a standalone output's folder) where it lies inside it, but only the hashes,
in order, decide whether they changed; a run directory that was moved or copied is still done.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from lmmixup.errors import StageMismatchError
from lmmixup.hashing import hash_file, hash_value
from lmmixup.io.jsonl import write_text_atomic

log = logging.getLogger(__name__)
VERSIONED = (
    "lmmixup",
    "torch",
    "transformers",
    "trl",
    "sentence-transformers",
    "faiss-cpu",
    "numpy",
)
"""The packages whose versions a manifest records."""


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape results."""
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def now() -> str:
    """The current UTC time as a manifest writes it."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_manifest(path: Path) -> dict | None:
    """A JSON manifest, or None when there is none. An unreadable one (truncated, not JSON)
    is named in a warning and treated as none: the work it describes is redone."""
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = f"not valid JSON ({exc})"
    else:
        if isinstance(manifest, dict):
            return manifest
        reason = "not a JSON object"
    log.warning("%s is unreadable: %s; treating it as missing (its work is redone)", path, reason)
    return None


def read_stage_manifest(path: Path) -> dict | None:
    """A stage's manifest, or None when there is none or it is not a stage manifest."""
    manifest = read_manifest(path)
    if manifest is not None and "status" not in manifest:
        log.warning("%s has no status; treating it as missing (its work is redone)", path)
        return None
    return manifest


def write_manifest(path: Path, manifest: dict) -> None:
    write_text_atomic(path, json.dumps(manifest, indent=2, ensure_ascii=False, default=str))


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}")
    return changed


def input_name(path: Path, base: Path) -> str:
    """An input's name in a manifest: relative to `base` when inside it, else absolute."""
    resolved = path.resolve()
    return (
        resolved.relative_to(base.resolve()).as_posix()
        if resolved.is_relative_to(base.resolve())
        else str(resolved)
    )


def fingerprint(inputs: Iterable[Path], config: dict, base: Path) -> dict:
    """The config, its hash and the inputs' hashes, as a manifest records them."""
    return {
        "config_hash": hash_value(config),
        "config": config,
        "inputs": {input_name(path, base): hash_file(path) for path in inputs},
    }


def changes(manifest: dict, current: dict) -> tuple[list[str], list[str]]:
    """(changed config keys, names of changed input files) between a manifest and a fingerprint.

    Inputs are compared by their hashes in order, not by their paths (module doc); older
    manifests, which name inputs by absolute path, compare the same way.
    """
    keys = []
    if manifest.get("config_hash") != current["config_hash"]:
        keys = changed_keys(manifest.get("config", {}), current["config"]) or ["?"]
    old = list(manifest.get("inputs", {}).values())
    new = current["inputs"]
    files = []
    if old != list(new.values()):
        files = [
            Path(name).name
            for position, (name, digest) in enumerate(new.items())
            if position >= len(old) or old[position] != digest
        ] or ["set of files"]
    return keys, files


def refusal(name: str, path: Path, keys: list[str], files: list[str]) -> StageMismatchError:
    """The error refusing a stage whose config keys or input files changed."""
    what = ([f"config ({', '.join(keys[:6])})"] if keys else []) + (
        [f"inputs ({', '.join(files[:4])})"] if files else []
    )
    return StageMismatchError(
        f"stage '{name}' in {path} was made with different {' and '.join(what)}; "
        "re-run with --force to redo it"
    )


def output_digests(folder: Path, outputs: Iterable[Path]) -> dict[str, dict]:
    """Size and hash of each output that exists, by its name in the stage's folder."""
    return {
        path.relative_to(folder).as_posix(): {
            "bytes": path.stat().st_size,
            "sha256": hash_file(path),
        }
        for path in outputs
        if path.is_file()
    }


def output_problems(manifest: dict, folder: Path) -> tuple[list[str], list[str]]:
    """(missing, changed): recorded outputs that are gone, or differ from what was recorded."""
    missing, changed = [], []
    for name, recorded in manifest.get("outputs", {}).items():
        path = folder / name
        if not path.is_file():
            missing.append(name)
        elif path.stat().st_size != recorded["bytes"] or hash_file(path) != recorded["sha256"]:
            changed.append(name)
    return missing, changed
