"""The stage runner: per-stage folders, manifests, skip-if-done, resume, refuse on change.

A stage is a folder under the run directory with its outputs, its rejects and a
`manifest.json` (config hash, input hashes, package versions, counts, timings, status).
- complete + same config and inputs  -> skipped;
- running (interrupted) or partial    -> resumed: per-record outputs continue after the last
  (e.g. failed ratings) + same            flushed batch, never duplicating a record;
- different config or inputs          -> refused with the differences, unless `force`
                                          (which redoes only such changed stages);
- inside `lmmixup run`, inputs changed because an earlier stage of the same run was redone
  or resumed (config unchanged)        -> redone: the user already asked for that change.

Per-record work is a function over a batch of records (`BatchFn`) so that the same function
can run under a distributed executor (e.g. Ray Data's `map_batches`) unchanged.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from lmmixup.errors import StageMismatchError
from lmmixup.hashing import hash_file, hash_value
from lmmixup.io import (
    AppendWriter,
    compact_done,
    read_records,
    reject_record,
    write_text_atomic,
)
from lmmixup.progress import progress

BatchFn = Callable[[list[dict]], list[dict]]
REJECT_KEY = "_reject"
_VERSIONED = (
    "lmmixup",
    "torch",
    "transformers",
    "trl",
    "sentence-transformers",
    "faiss-cpu",
    "numpy",
)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape results."""
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class StageDir:
    """What a stage body gets: its folder and a place to put counts for the manifest."""

    name: str
    path: Path
    counts: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False
    previous_runs: int = 0
    partial: str | None = None  # why the stage is not finished yet (re-runs retry it)

    def file(self, name: str) -> Path:
        return self.path / name


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}")
    return changed


def _fingerprint(inputs: Iterable[Path], config: dict) -> dict:
    return {
        "config_hash": hash_value(config),
        "config": config,
        "inputs": {str(path): hash_file(path) for path in inputs},
    }


def _changes(manifest: dict, fingerprint: dict) -> tuple[list[str], list[str]]:
    """(changed config keys, names of changed input files) between a manifest and now."""
    keys = []
    if manifest.get("config_hash") != fingerprint["config_hash"]:
        keys = _diff(manifest.get("config", {}), fingerprint["config"]) or ["?"]
    files = []
    if manifest.get("inputs") != fingerprint["inputs"]:
        old = manifest.get("inputs", {})
        files = [
            Path(p).name for p in fingerprint["inputs"] if old.get(p) != fingerprint["inputs"][p]
        ] or ["set of files"]
    return keys, files


def _refusal(name: str, path: Path, keys: list[str], files: list[str]) -> StageMismatchError:
    what = ([f"config ({', '.join(keys[:6])})"] if keys else []) + (
        [f"inputs ({', '.join(files[:4])})"] if files else []
    )
    return StageMismatchError(
        f"stage '{name}' in {path} was made with different {' and '.join(what)}; "
        "re-run with --force to redo it"
    )


def stage_is_current(
    run_dir: str | Path, name: str, inputs: Iterable[str | Path], config: dict
) -> bool:
    """Whether `run_stage` would skip this stage: complete, with the same config and inputs."""
    manifest = read_manifest(Path(run_dir) / name / "manifest.json")
    if manifest is None or manifest.get("status") != "complete":
        return False
    return _changes(manifest, _fingerprint([Path(p) for p in inputs], config)) == ([], [])


def read_manifest(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def write_manifest(path: Path, manifest: dict) -> None:
    write_text_atomic(path, json.dumps(manifest, indent=2, ensure_ascii=False, default=str))


@dataclass
class StageResult:
    name: str
    path: Path
    manifest: dict
    skipped: bool


def run_stage(
    run_dir: str | Path,
    name: str,
    *,
    inputs: Iterable[str | Path],
    config: dict,
    body: Callable[[StageDir], None],
    force: bool = False,
    follow_inputs: bool = False,
) -> StageResult:
    """Run one stage of a run directory with skip / resume / refuse semantics (module doc).

    `follow_inputs`: redo the stage, without `force`, when only its inputs changed (they are
    outputs of earlier stages of the same run).
    """
    stage_path = Path(run_dir) / name
    return _run(
        stage_path,
        stage_path / "manifest.json",
        name,
        inputs,
        config,
        body,
        [stage_path],
        force=force,
        follow_inputs=follow_inputs,
    )


def run_file_stage(
    output: str | Path,
    name: str,
    *,
    inputs: Iterable[str | Path],
    config: dict,
    body: Callable[[StageDir], None],
    force: bool = False,
) -> StageResult:
    """A stage outside a run directory (a standalone command): the manifest sits beside
    `output` as OUTPUT.manifest.json; the same skip / resume / refuse rules apply."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    manifest_path = output.with_name(output.name.removesuffix(".jsonl") + ".manifest.json")
    owned = [output, output.with_name(output.name.removesuffix(".jsonl") + ".rejects.jsonl")]
    return _run(output.parent, manifest_path, name, inputs, config, body, owned, force=force)


def _clear(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _run(
    stage_path, manifest_path, name, inputs, config, body, owned, *, force, follow_inputs=False
) -> StageResult:
    fingerprint = _fingerprint([Path(p) for p in inputs], config)
    manifest = read_manifest(manifest_path)
    if manifest is not None:
        keys, files = _changes(manifest, fingerprint)
        if keys or files:
            if not (force or (follow_inputs and not keys)):
                raise _refusal(name, manifest_path, keys, files)
            _clear([*owned, manifest_path])
            manifest = None
        elif manifest["status"] == "complete":
            return StageResult(name, stage_path, manifest, skipped=True)
    stage_path.mkdir(parents=True, exist_ok=True)
    resumed = manifest is not None
    history = manifest.get("history", []) if manifest else []
    started, clock = _now(), time.perf_counter()
    manifest = {
        "stage": name,
        "status": "running",
        **fingerprint,
        "versions": package_versions(),
        "started_at": started,
        "history": history,
    }
    write_manifest(manifest_path, manifest)
    stage = StageDir(name, stage_path, resumed=resumed, previous_runs=len(history))
    try:
        body(stage)
    finally:
        seconds = round(time.perf_counter() - clock, 3)
        history.append({"started_at": started, "seconds": seconds, "resumed": resumed})
        manifest.update(
            history=history,
            counts=stage.counts,
            total_seconds=round(sum(h["seconds"] for h in history), 3),
        )
        write_manifest(manifest_path, manifest)
    manifest.update(
        status="partial" if stage.partial else "complete", finished_at=_now(), seconds=seconds
    )
    if stage.partial:
        manifest["partial_reason"] = stage.partial
    write_manifest(manifest_path, manifest)
    return StageResult(name, stage_path, manifest, skipped=False)


def _done_ids(
    output: Path,
    rejects: Path,
    is_done: Callable[[dict], bool],
    key: str,
    retry: Callable[[dict], bool],
) -> set:
    done = set(compact_done(output, is_done, key))
    done |= set(compact_done(rejects, lambda record: not retry(record), key))
    return done


def process_records(
    records: Iterable[tuple[int, dict]],
    fn: BatchFn,
    *,
    output: Path,
    rejects: Path,
    source: str,
    batch_size: int = 16,
    is_done: Callable[[dict], bool] = lambda record: True,
    retry: Callable[[dict], bool] = lambda reject: False,
    key: str = "id",
    total: int | None = None,
    description: str = "records",
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, int]:
    """Apply a batch function to (line, record) pairs, appending results durably.

    Records whose key already has a finished output (or a reject) are skipped, so a re-run
    after a crash continues where it stopped. Each batch is flushed to disk before the next
    starts: a kill loses at most the batch in flight. Outputs carrying `REJECT_KEY` go to
    the rejects file with the input's file and line; a reject for which `retry` is true (e.g.
    a failed model call) is removed on the next run and its record done again. `should_stop`
    is asked after each
    batch (e.g. a request budget ran out): the loop then ends with `stopped_early` counted.
    """
    done = _done_ids(output, rejects, is_done, key, retry)
    counts = {"already_done": 0, "written": 0, "rejected": 0, "stopped_early": 0}
    with (
        AppendWriter(output) as out,
        AppendWriter(rejects) as bad,
        progress(description, total) as advance,
    ):
        batch: list[tuple[int, dict]] = []

        def flush() -> None:
            results = fn([record for _, record in batch])
            lines = {record[key]: number for number, record in batch}
            good = [r for r in results if REJECT_KEY not in r]
            failed = [_as_reject(r, source, lines) for r in results if REJECT_KEY in r]
            bad.write_many(failed)
            out.write_many(good)
            counts["written"] += len(good)
            counts["rejected"] += len(failed)
            advance(len(batch))
            batch.clear()

        for number, record in records:
            if record[key] in done:
                counts["already_done"] += 1
                advance()
                continue
            batch.append((number, record))
            if len(batch) >= batch_size:
                flush()
                if should_stop():
                    counts["stopped_early"] = 1
                    return counts
        if batch:
            flush()
    return counts


def _as_reject(record: dict, source: str, lines: dict) -> dict:
    reason = record[REJECT_KEY]
    clean = {k: v for k, v in record.items() if k != REJECT_KEY}
    return {
        "id": record.get("id"),
        **reject_record(source, lines.get(record.get("id"), 0), reason, clean),
    }


def numbered(path: Path) -> Iterable[tuple[int, dict]]:
    """(line number, record) pairs of a JSONL file written by lmmixup."""
    return enumerate(read_records(path), start=1)
