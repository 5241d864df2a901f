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

Inputs are compared by content (`lmmixup.runtime.manifest`). A stage holds its run
directory's lock (or its output's) while it runs: one writer at a time. Per-record work
inside a stage body goes through an executor (`lmmixup.runtime.executor`).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmmixup.errors import StageMismatchError
from lmmixup.io.formats import beside
from lmmixup.io.outputs import check_outputs, output_lock, run_dir_lock
from lmmixup.runtime.manifest import (
    changes,
    fingerprint,
    now,
    output_digests,
    output_problems,
    package_versions,
    read_stage_manifest,
    refusal,
    write_manifest,
)

log = logging.getLogger(__name__)


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


def stage_is_current(
    run_dir: str | Path, name: str, inputs: Iterable[str | Path], config: dict
) -> bool:
    """Whether `run_stage` would skip this stage: complete, with the same config and inputs,
    and the outputs it recorded as it left them."""
    layout = _stage_layout(Path(run_dir), name)
    manifest = read_stage_manifest(layout.manifest)
    if manifest is None or manifest["status"] != "complete":
        return False
    current = fingerprint([Path(p) for p in inputs], config, layout.base)
    return changes(manifest, current) == ([], []) and output_problems(manifest, layout.folder) == (
        [],
        [],
    )


@dataclass
class StageResult:
    name: str
    path: Path
    manifest: dict
    skipped: bool


def run_summary(
    run_dir: Path, results: list[StageResult], outputs: dict[str, dict[str, Path]]
) -> dict:
    """The `summary.json` core of a run of stages: each stage's status, counts, time and
    manifest, and every output by `stage.key`."""
    return {
        "run_dir": str(run_dir.resolve()),
        "stages": {
            r.name: {
                "status": r.manifest["status"],
                "skipped": r.skipped,
                "counts": r.manifest.get("counts", {}),
                "seconds": r.manifest.get("total_seconds"),
                "manifest": str(r.path / "manifest.json"),
            }
            for r in results
        },
        "outputs": {
            f"{stage}.{key}": str(path)
            for stage, files in outputs.items()
            for key, path in files.items()
        },
    }


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


def fileread_stage_manifest(output: Path) -> Path:
    """Where a standalone command keeps its manifest: OUTPUT.manifest.json beside OUTPUT."""
    return output.with_name(output.name.removesuffix(".jsonl") + ".manifest.json")


def rejects_beside(output: Path) -> Path:
    """A standalone command's rejects file: OUTPUT.rejects.jsonl beside OUTPUT (JSONL whatever
    OUTPUT's format: `train.parquet` -> `train.rejects.jsonl`)."""
    return beside(output, "rejects")


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
    manifest = fileread_stage_manifest(output)
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
    layout: _Layout, name: str, current: dict, *, force: bool, follow_inputs: bool
) -> dict | None:
    """The stage's manifest when its work may be skipped or resumed; None (after clearing
    its files) when it starts afresh. Refuses changes the user did not ask for."""
    manifest = read_stage_manifest(layout.manifest)
    if manifest is None:
        if layout.manifest.exists():  # unreadable: whatever is there is of unknown origin
            _clear(layout)
        return None
    keys, files = changes(manifest, current)
    if keys or files:
        if not (force or (follow_inputs and not keys)):
            raise refusal(name, layout.manifest, keys, files)
        _clear(layout)
        return None
    if manifest["status"] != "complete":
        return manifest
    missing, changed = output_problems(manifest, layout.folder)
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
    current = fingerprint([Path(p) for p in inputs], config, layout.base)
    manifest = _manifest_to_continue(
        layout, name, current, force=force, follow_inputs=follow_inputs
    )
    if manifest is not None and manifest["status"] == "complete":
        return StageResult(name, layout.folder, manifest, skipped=True)
    layout.folder.mkdir(parents=True, exist_ok=True)
    resumed = manifest is not None
    history = manifest.get("history", []) if manifest else []
    started, clock = now(), time.perf_counter()
    manifest = {
        "stage": name,
        "status": "running",
        **current,
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
        status="partial" if stage.partial else "complete", finished_at=now(), seconds=seconds
    )
    if stage.partial:
        manifest["partial_reason"] = stage.partial
    else:
        manifest["outputs"] = output_digests(layout.folder, layout.outputs)
    write_manifest(layout.manifest, manifest)
    return StageResult(name, layout.folder, manifest, skipped=False)
