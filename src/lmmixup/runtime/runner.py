"""The stage runner: per-stage folders, manifests, skip-if-done, resume, refuse on change.

A stage is a folder under the run directory with its outputs, its rejects and a
`manifest.json` (config hash, input hashes, package versions, counts, timings, status).
- complete + same config and inputs  -> skipped;
- running (interrupted) or partial    -> resumed: per-record outputs continue after the last
  (e.g. failed ratings) + same            flushed batch, never duplicating a record;
- different config or inputs          -> refused with the differences, unless `force`
                                          (which redoes only such changed stages);
- inside `lmmixup run`, inputs changed because an earlier stage of the same run was redone
  or resumed (config unchanged)        -> redone: the user already asked for that change;
- complete, but an output it recorded
  is gone                              -> redone, with a warning;
- complete, but an output it recorded
  was changed by hand                  -> refused, unless `force`;
- an unreadable manifest (truncated)   -> unknown state: redone from scratch, with a warning.

Inputs are compared by content: the manifest names each by its path relative to the run
directory (or the standalone output's folder) where it lies inside it, but only the hashes, in
order, decide whether they changed; a run directory that was moved or copied is still done.
A stage holds its run directory's lock (or its output's) while it runs: one writer at a time.

Per-record work is a function over a batch of records (`BatchFn`) so that the same function
can run under a distributed executor (e.g. Ray Data's `map_batches`) unchanged.
"""

from __future__ import annotations

import json
import logging
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
from lmmixup.io.jsonl import (
    AppendWriter,
    compact_done,
    read_records,
    reject_record,
    write_text_atomic,
)
from lmmixup.io.outputs import check_outputs, output_lock, run_dir_lock
from lmmixup.progress import progress

log = logging.getLogger(__name__)
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


def _input_name(path: Path, base: Path) -> str:
    """An input's name in a manifest: relative to `base` when inside it, else absolute."""
    resolved = path.resolve()
    return (
        resolved.relative_to(base.resolve()).as_posix()
        if resolved.is_relative_to(base.resolve())
        else str(resolved)
    )


def _fingerprint(inputs: Iterable[Path], config: dict, base: Path) -> dict:
    return {
        "config_hash": hash_value(config),
        "config": config,
        "inputs": {_input_name(path, base): hash_file(path) for path in inputs},
    }


def _changes(manifest: dict, fingerprint: dict) -> tuple[list[str], list[str]]:
    """(changed config keys, names of changed input files) between a manifest and now.

    Inputs are compared by their hashes in order, not by their paths (module doc); older
    manifests, which name inputs by absolute path, compare the same way.
    """
    keys = []
    if manifest.get("config_hash") != fingerprint["config_hash"]:
        keys = _diff(manifest.get("config", {}), fingerprint["config"]) or ["?"]
    old = list(manifest.get("inputs", {}).values())
    new = fingerprint["inputs"]
    files = []
    if old != list(new.values()):
        files = [
            Path(name).name
            for position, (name, digest) in enumerate(new.items())
            if position >= len(old) or old[position] != digest
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


@dataclass(frozen=True)
class _Layout:
    """Where a stage keeps its files."""

    folder: Path  # the StageDir's path
    manifest: Path
    base: Path  # inputs inside it are named relative to it in the manifest
    owned: tuple[Path, ...]  # removed when the stage is redone
    outputs: tuple[Path, ...]  # recorded (size, hash) when complete; checked on a skip


def _stage_layout(run_dir: Path, name: str, outputs: Iterable[str] = ()) -> _Layout:
    folder = run_dir / name
    return _Layout(
        folder, folder / "manifest.json", run_dir, (folder,), tuple(folder / o for o in outputs)
    )


def _output_digests(layout: _Layout) -> dict[str, dict]:
    """Size and hash of each output the stage wrote, by its name in the stage's folder."""
    return {
        path.relative_to(layout.folder).as_posix(): {
            "bytes": path.stat().st_size,
            "sha256": hash_file(path),
        }
        for path in layout.outputs
        if path.is_file()
    }


def _output_problems(manifest: dict, layout: _Layout) -> tuple[list[str], list[str]]:
    """(missing, changed): recorded outputs that are gone, or differ from what was recorded."""
    missing, changed = [], []
    for name, recorded in manifest.get("outputs", {}).items():
        path = layout.folder / name
        if not path.is_file():
            missing.append(name)
        elif path.stat().st_size != recorded["bytes"] or hash_file(path) != recorded["sha256"]:
            changed.append(name)
    return missing, changed


def stage_is_current(
    run_dir: str | Path, name: str, inputs: Iterable[str | Path], config: dict
) -> bool:
    """Whether `run_stage` would skip this stage: complete, with the same config and inputs,
    and the outputs it recorded as it left them."""
    layout = _stage_layout(Path(run_dir), name)
    manifest = _stage_manifest(layout.manifest)
    if manifest is None or manifest["status"] != "complete":
        return False
    fingerprint = _fingerprint([Path(p) for p in inputs], config, layout.base)
    return _changes(manifest, fingerprint) == ([], []) and _output_problems(manifest, layout) == (
        [],
        [],
    )


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


def _stage_manifest(path: Path) -> dict | None:
    """A stage's manifest, or None when there is none or it is not a stage manifest."""
    manifest = read_manifest(path)
    if manifest is not None and "status" not in manifest:
        log.warning("%s has no status; treating it as missing (its work is redone)", path)
        return None
    return manifest


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
    outputs: Iterable[str] = (),
) -> StageResult:
    """Run one stage of a run directory with skip / resume / refuse semantics (module doc),
    holding the run directory's lock.

    `follow_inputs`: redo the stage, without `force`, when only its inputs changed (they are
    outputs of earlier stages of the same run). `outputs`: the files the stage writes in its
    folder, recorded (size, hash) when it completes and checked when it is skipped.
    """
    layout = _stage_layout(Path(run_dir), name, outputs)
    with run_dir_lock(run_dir):
        return _run(layout, name, inputs, config, body, force=force, follow_inputs=follow_inputs)


def file_stage_manifest(output: Path) -> Path:
    """Where a standalone command keeps its manifest: OUTPUT.manifest.json beside OUTPUT."""
    return output.with_name(output.name.removesuffix(".jsonl") + ".manifest.json")


def rejects_beside(output: Path) -> Path:
    """A standalone command's rejects file: OUTPUT.rejects.jsonl beside OUTPUT."""
    return output.with_name(output.name.removesuffix(".jsonl") + ".rejects.jsonl")


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
    `output` as OUTPUT.manifest.json; the same skip / resume / refuse rules apply. Before any
    work, the output must be JSONL and none of its files an input; then it holds the output's
    lock while it runs."""
    output = Path(output)
    inputs = [Path(p) for p in inputs]
    manifest = file_stage_manifest(output)
    owned = (output, rejects_beside(output))
    check_outputs(inputs, [*owned, manifest], records=[output])
    output.parent.mkdir(parents=True, exist_ok=True)
    layout = _Layout(output.parent, manifest, output.parent, owned, owned)
    with output_lock(output):
        return _run(layout, name, inputs, config, body, force=force)


def _clear(layout: _Layout) -> None:
    for path in [*layout.owned, layout.manifest]:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _manifest_to_continue(
    layout: _Layout, name: str, fingerprint: dict, *, force: bool, follow_inputs: bool
) -> dict | None:
    """The stage's manifest when its work may be skipped or resumed; None (after clearing
    its files) when it starts afresh. Refuses changes the user did not ask for."""
    manifest = _stage_manifest(layout.manifest)
    if manifest is None:
        if layout.manifest.exists():  # unreadable: whatever is there is of unknown origin
            _clear(layout)
        return None
    keys, files = _changes(manifest, fingerprint)
    if keys or files:
        if not (force or (follow_inputs and not keys)):
            raise _refusal(name, layout.manifest, keys, files)
        _clear(layout)
        return None
    if manifest["status"] != "complete":
        return manifest
    missing, changed = _output_problems(manifest, layout)
    if changed and not force:
        raise StageMismatchError(
            f"stage '{name}' in {layout.manifest}: {', '.join(changed[:4])} changed since the "
            "stage completed; re-run with --force to redo it"
        )
    if missing or changed:
        log.warning(
            "stage '%s' in %s: %s since it completed; redoing the stage",
            name,
            layout.folder,
            ", ".join([f"{m} is missing" for m in missing] + [f"{c} changed" for c in changed]),
        )
        _clear(layout)
        return None
    return manifest


def _run(layout, name, inputs, config, body, *, force, follow_inputs=False) -> StageResult:
    fingerprint = _fingerprint([Path(p) for p in inputs], config, layout.base)
    manifest = _manifest_to_continue(
        layout, name, fingerprint, force=force, follow_inputs=follow_inputs
    )
    if manifest is not None and manifest["status"] == "complete":
        return StageResult(name, layout.folder, manifest, skipped=True)
    layout.folder.mkdir(parents=True, exist_ok=True)
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
    write_manifest(layout.manifest, manifest)
    stage = StageDir(name, layout.folder, resumed=resumed, previous_runs=len(history))
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
        write_manifest(layout.manifest, manifest)
    manifest.update(
        status="partial" if stage.partial else "complete", finished_at=_now(), seconds=seconds
    )
    if stage.partial:
        manifest["partial_reason"] = stage.partial
    else:
        manifest["outputs"] = _output_digests(layout)
    write_manifest(layout.manifest, manifest)
    return StageResult(name, layout.folder, manifest, skipped=False)


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
