"""The report's overview sections: the models a run used, a sample of its training rows, and
links to every file it wrote."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import yaml

from lmmixup.report.data import RunView, clip, not_available
from lmmixup.report.samples import spread

SAMPLE_ROWS = 8  # training rows shown
MAX_FILES = 400  # files linked
_MODELS = (  # role, config section, key of its backend section (None: a bare model name)
    ("judge", "rate", "judge"),
    ("distiller", "distill", "generator"),
)
_EMBEDDERS = ("rate", "cluster", "distill", "select")


def run_config(run: RunView) -> dict[str, dict]:
    """The run's config by section: config.yaml, else the stage manifests' recorded config."""
    path = run.path / "config.yaml"
    if run.files is None and path.is_file():
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            data = None
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if isinstance(v, dict)}
    found: dict[str, dict] = {}
    for stage, manifest in run.stages.items():
        config = manifest.get("config")
        if not isinstance(config, dict):
            continue
        if run.files is not None:  # a standalone command records its section itself
            found.setdefault(stage, config)
        else:
            found |= {k: v for k, v in config.items() if isinstance(v, dict) and k not in found}
    return found


def models_section(run: RunView) -> dict:
    """Judge, distiller and embedders, each with its backend, from the run's config."""
    config = run_config(run)
    rows = []
    for role, section, key in _MODELS:
        model = config.get(section, {}).get(key)
        if isinstance(model, dict):
            detail = f"mode {config[section]['mode']}" if "mode" in config[section] else ""
            rows.append(
                [role, str(model.get("backend", "?")), str(model.get("model", "?")), detail]
            )
    embedders: dict[str, list[str]] = {}
    for section in _EMBEDDERS:
        name = config.get(section, {}).get("embedder")
        if isinstance(name, str):
            embedders.setdefault(name, []).append(section)
    rows += [
        ["embedder", "sentence-transformers", name, "for " + ", ".join(sections)]
        for name, sections in embedders.items()
    ]
    if not rows:
        return {"note": not_available("config.yaml or a stage manifest naming the models")}
    return {"rows": [[clip(cell, 300) for cell in row] for row in rows]}


def training_rows_section(run: RunView) -> dict:
    """A few rows of the training set, spread over the file, each marked distilled or original."""
    path = run.file("select", "train.jsonl")
    rows = list(run.rows(path))
    if not rows:
        return {"note": not_available("select/train.jsonl")}
    shown = [
        {
            "origin": str(row.get("origin", "?")),
            "source": clip(row.get("source", "?"), 80),
            "id": clip(row.get("id", "?"), 80),
            "score": str(row.get("score", "–")),
            "prompt": clip(row.get("prompt")),
            "completion": clip(row.get("completion")),
        }
        for row in spread(rows, SAMPLE_ROWS)
    ]
    return {"intro": f"{len(shown)} of {len(rows):,} rows, spread over the file.", "rows": shown}


def _size(path: Path) -> str:
    size = path.stat().st_size
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return ""


def files_section(run: RunView) -> dict:
    """Every file of the run (or of the folder of stage outputs), linked relative to the report."""
    base = run.link_base or run.path
    found = sorted(p for p in run.path.rglob("*") if p.is_file())
    if not found:
        return {"note": not_available("no files")}
    links = [
        {
            "href": quote(Path(os.path.relpath(path, base)).as_posix()),
            "name": run.relative(path),
            "size": _size(path),
        }
        for path in found[:MAX_FILES]
    ]
    more = len(found) - MAX_FILES
    unused = ", ".join(run.unused)
    return {
        "links": links,
        "more": f"… and {more:,} more files." if more > 0 else "",
        "unused": f"Files the report could not place: {unused}." if unused else "",
    }
