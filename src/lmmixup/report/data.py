"""Reading a run directory for the report: stage manifests in run order and tolerant JSONL reads.

Nothing here renders anything; the readers return plain values that the sections lay out.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lmmixup.errors import LmmixupError
from lmmixup.io.jsonl import iter_jsonl
from lmmixup.report.folder import detect_stage_files
from lmmixup.stages import PIPELINE_ORDER

RESULTS_FILE = Path("experiment") / "results.json"
SUMMARY_FILE = "summary.json"  # `lmmixup run`'s summary; its `warnings` head the page
MAX_CHARS = 600  # characters shown per text


def clip(text: object, limit: int = MAX_CHARS) -> str:
    """`text` as a string of at most `limit` characters, saying how much was cut."""
    text = "" if text is None else str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit:,} more characters]"


def not_available(what: str) -> str:
    """The note a section or plot shows when the files it needs are absent."""
    return f"Not available: {what}."


def number(value: object) -> float | None:
    """A real number, or None (booleans, strings, NaN and the like are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


@dataclass
class RunView:
    """Read-only access to a run directory: stage manifests in run order, tolerant JSONL reads."""

    path: Path
    stages: dict[str, dict] = field(default_factory=dict)
    bad_lines: dict[str, set[int]] = field(default_factory=dict)
    # a folder of stage-by-stage outputs: where each run-directory file is (report.folder)
    files: dict[tuple[str, str], Path] | None = None
    unused: list[str] = field(default_factory=list)  # its files the report could not place
    link_base: Path | None = None  # the report's folder: links to files are relative to it

    def file(self, stage: str, name: str) -> Path | None:
        path = self.path / stage / name if self.files is None else self.files.get((stage, name))
        return path if path is not None and path.is_file() else None

    def counts(self, stage: str) -> dict:
        """The stage's counts when it ended (an interrupted stage's counts are not trusted)."""
        manifest = self.stages.get(stage, {})
        counts = manifest.get("counts")
        return counts if manifest.get("status") != "running" and isinstance(counts, dict) else {}

    def rows(self, path: Path | None) -> Iterator[dict]:
        """The records of a JSONL file; unreadable lines are noted for the page, not fatal."""
        if path is None:
            return
        for line in iter_jsonl(path):
            if line.error is None and isinstance(line.value, dict):
                yield line.value
            else:
                self.bad_lines.setdefault(self.relative(path), set()).add(line.number)

    def pick(self, path: Path | None, wanted: set, key: Callable[[dict], object]) -> dict:
        """The records of a file whose key is in `wanted`, by key (first one wins)."""
        found: dict = {}
        for record in self.rows(path):
            value = key(record)
            if value in wanted and value not in found:
                found[value] = record
        return found

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.path)) if path.is_relative_to(self.path) else str(path)


def load_run(run_dir: str | Path) -> RunView:
    """The run directory's stages (folders with a manifest.json, one or two levels down)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise LmmixupError(f"{run_dir}: no such run directory")
    run = RunView(path)
    manifests = sorted(path.glob("*/manifest.json")) + sorted(path.glob("*/*/manifest.json"))
    found = []
    for manifest_path in manifests:
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            problem = None if isinstance(manifest, dict) else "not a JSON object"
        except (OSError, ValueError) as exc:
            problem = type(exc).__name__
        if problem:
            manifest = {"status": f"unreadable manifest ({problem})"}
        found.append(
            (str(manifest.get("started_at", "")), run.relative(manifest_path.parent), manifest)
        )
    order = {name: i for i, name in enumerate(PIPELINE_ORDER)}
    found.sort(key=lambda item: (order.get(item[1], len(order)), item[0], item[1]))
    run.stages = {name: manifest for _, name, manifest in found}
    if run.stages or (path / "config.yaml").is_file() or (path / RESULTS_FILE).is_file():
        return run
    run.files, manifests, run.unused = detect_stage_files(path)
    if not run.files:
        raise LmmixupError(
            f"{run_dir} is not a run directory (no <stage>/manifest.json, config.yaml or "
            f"{RESULTS_FILE}) or a folder of stage outputs (no JSONL records lmmixup writes)"
        )
    order = {name: i for i, name in enumerate(PIPELINE_ORDER)}
    for stage in sorted({stage for stage, _ in run.files}, key=lambda s: order.get(s, len(order))):
        run.stages[stage] = manifests.get(stage, {"status": "found (no manifest)"})
    return run


def score_histogram(run: RunView, stage: str) -> tuple[list[int], int] | None:
    """Records per compressed score 0-5 and failed ratings: the manifest's, else the file's."""
    counts = run.counts(stage)
    if isinstance(counts.get("score_histogram"), dict):
        hist = counts["score_histogram"]
        failed = number(counts.get("failed")) or 0
        return [int(number(hist.get(str(s))) or 0) for s in range(6)], int(failed)
    path = run.file(stage, "rated.jsonl")
    if path is None:
        return None
    hist, failed = [0] * 6, 0
    for record in run.rows(path):
        score = rating_score(record)
        if isinstance(score, int) and 0 <= score <= 5:
            hist[score] += 1
        else:
            failed += 1
    return hist, failed


def rating_score(record: dict) -> object:
    """The `rating.score` of a rated record, or None."""
    rating = record.get("rating")
    return rating.get("score") if isinstance(rating, dict) else None


def cluster_records(run: RunView) -> list[dict]:
    """Cluster records with an id and a list of member ids (others cannot be shown)."""
    path = run.file("cluster", "clusters.jsonl")
    return [
        c for c in run.rows(path) if c.get("cluster_id") and isinstance(c.get("member_ids"), list)
    ]


def reject_reasons(run: RunView, stage: str) -> Counter | None:
    """Rejects by reason: the manifest's tally when the stage ended, else the rejects file's."""
    counted = run.counts(stage).get("reject_reasons")
    if isinstance(counted, dict):
        return Counter({str(k): int(v) for k, v in counted.items() if number(v) is not None})
    path = run.file(stage, "rejects.jsonl")
    if path is None:
        return None
    return Counter(str(r.get("reason", "no reason given")) for r in run.rows(path))


def read_results(run: RunView) -> dict | str:
    """experiment/results.json as a mapping with a `rows` list, or why it cannot be shown."""
    path = run.path / RESULTS_FILE
    if not path.is_file():
        return not_available(str(RESULTS_FILE))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"{RESULTS_FILE} could not be read: {exc}"
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        return f"{RESULTS_FILE} has no 'rows' list"
    return data


def read_warnings(run: RunView) -> list[dict] | None:
    """The run's warnings ({code, message, advice}) from summary.json; None when the file, or
    its `warnings` key (runs made before there were warnings), is absent or unreadable."""
    path = run.path / SUMMARY_FILE
    try:
        found = json.loads(path.read_text(encoding="utf-8")).get("warnings")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(found, list):
        return None
    return [
        {key: clip(w.get(key, ""), 2000) for key in ("code", "message", "advice")}
        for w in found
        if isinstance(w, dict)
    ]
