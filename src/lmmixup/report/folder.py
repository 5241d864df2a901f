"""A folder of stage-by-stage outputs (what `lmmixup rate/split/cluster/distill/select -o` write)
seen as a run directory, so the report can be made for it too.

How the files are found, in this order (JSONL files directly in the folder):
1. A standalone stage's manifest, `NAME.manifest.json` with `"stage": "rate" | "cluster" |
   "distill"`, names its output `NAME.jsonl` and its rejects `NAME.rejects.jsonl`.
2. Every other `*.jsonl` (not `*.rejects.jsonl`, `*.why.jsonl`, `*.heldout.jsonl`) by the shape
   of its first record: `origin` -> the training set (select); `cluster_id` with `member_ids`
   and no prompt -> clusters; `cluster_id` with a prompt -> distilled pairs; a `rating` -> the
   split's high or low part when its name has `high`/`low` (`unrated` is left out), else the
   rated pool; a prompt and completion -> the imported pool.
3. A rejects file beside a found file (`NAME.rejects.jsonl`) is that stage's rejects.
When two files fit one place the first by name is used and the rest are listed as unused.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmmixup.io.jsonl import iter_jsonl

MAIN_FILES = {
    "import": "pool.jsonl",
    "rate": "rated.jsonl",
    "cluster": "clusters.jsonl",
    "distill": "distilled.jsonl",
    "select": "train.jsonl",
}
"""Each stage's output as the report names it (run-directory names)."""
COMPANIONS = (".rejects.jsonl", ".why.jsonl", ".heldout.jsonl", ".manifest.json")


def _first_record(path: Path) -> dict | None:
    for line in iter_jsonl(path):
        if line.error is None and isinstance(line.value, dict):
            return line.value
    return None


def _place(path: Path, record: dict) -> tuple[str, str] | None:
    """Where a file's records belong in a run directory, judged by their shape and its name."""
    name = path.name.lower()
    if "origin" in record and "prompt" in record:
        return "select", MAIN_FILES["select"]
    if "cluster_id" in record:
        if "prompt" in record:
            return "distill", MAIN_FILES["distill"]
        return ("cluster", MAIN_FILES["cluster"]) if "member_ids" in record else None
    if "rating" in record:
        if "unrated" in name:
            return None
        for part in ("high", "low"):
            if part in name:
                return "split", f"{part}.jsonl"
        return "rate", MAIN_FILES["rate"]
    if "prompt" in record and "completion" in record:
        return "import", MAIN_FILES["import"]
    return None


def detect_stage_files(folder: Path) -> tuple[dict, dict, list[str]]:
    """({(stage, name): path}, {stage: manifest}, unused file names) for a folder of outputs."""
    files: dict[tuple[str, str], Path] = {}
    manifests: dict[str, dict] = {}
    unused: list[str] = []

    def claim(place: tuple[str, str], path: Path) -> None:
        if place in files:
            unused.append(path.name)
            return
        files[place] = path
        rejects = path.with_name(path.name.removesuffix(".jsonl") + ".rejects.jsonl")
        if rejects.is_file():
            files.setdefault((place[0], "rejects.jsonl"), rejects)

    for path in sorted(folder.glob("*.manifest.json")):
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        stage = manifest.get("stage") if isinstance(manifest, dict) else None
        output = path.with_name(path.name.removesuffix(".manifest.json") + ".jsonl")
        if stage in MAIN_FILES and output.is_file() and stage not in manifests:
            manifests[stage] = manifest
            claim((stage, MAIN_FILES[stage]), output)
    claimed = set(files.values())
    for path in sorted(folder.glob("*.jsonl")):
        if path in claimed or path.name.endswith(COMPANIONS):
            continue
        record = _first_record(path)
        place = _place(path, record) if record is not None else None
        if place is None:
            unused.append(path.name)
        else:
            claim(place, path)
    return files, manifests, unused
