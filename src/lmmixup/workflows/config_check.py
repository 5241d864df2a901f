"""`lmmixup config check`: what a well-typed run config means, checked before a run starts.

The config sections refuse values of the wrong type or range; this module looks at what the
values say together and about the machine: sources that are not there, a model a backend
cannot serve, a budget the pool cannot fill, cluster sizes that contradict each other. Each
finding is one line naming its key and what to do; errors stop a run, warnings do not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmmixup.config import BackendConfig, RunConfig, SplitConfig
from lmmixup.io.assets import BUILTIN_SOURCES, BUNDLED, builtin_path
from lmmixup.workflows.pipeline import config_problems

MAX_COUNTED_BYTES = 2 << 30  # JSONL files larger than this are not counted (pool size unknown)


@dataclass(frozen=True)
class Finding:
    """One problem: `error` (the run cannot work) or `warning` (it works, maybe not as meant)."""

    level: str
    key: str
    message: str

    def line(self, origin: str) -> str:
        return f"{origin}: {self.level}: {self.key}: {self.message}"


def check_meaning(cfg: RunConfig) -> list[Finding]:
    """Every finding for a run config, errors first."""
    found = [
        Finding("error", key, message)
        for key, _, message in (problem.partition(": ") for problem in config_problems(cfg))
    ]
    found += _model_findings("rate.judge", cfg.rate.judge)
    found += _model_findings("distill.generator", cfg.distill.generator)
    embedders = {
        f"{section}.embedder": getattr(cfg, section).embedder
        for section in ("rate", "cluster", "distill", "select")
    }
    found += [
        Finding("error", key, problem)
        for key, name in embedders.items()
        if (problem := _name_problem(name)) is not None
    ]
    found += _filter_findings(cfg)
    found += _cluster_findings(cfg)
    default_threshold = SplitConfig.model_fields["threshold"].default
    if cfg.split.high_fraction is not None and cfg.split.threshold != default_threshold:
        found.append(
            Finding(
                "warning",
                "split.threshold",
                f"ignored: split.high_fraction ({cfg.split.high_fraction}) decides what is high; "
                "remove one of the two",
            )
        )
    found += _budget_findings(cfg, pool_size(cfg))
    return sorted(found, key=lambda finding: finding.level != "error")


def _model_findings(key: str, model: BackendConfig) -> list[Finding]:
    """A model its backend cannot load or reach."""
    problem = _name_problem(model.model) if model.backend != "openai" else None
    found = [] if problem is None else [Finding("error", f"{key}.model", problem)]
    if model.backend == "openai" and model.model.startswith("bundled:"):
        found.append(
            Finding(
                "error",
                f"{key}.model",
                f"{model.model} is a model this package ships, which no server serves; with "
                f"{key}.backend openai name the model the server serves, or use "
                f"{key}.backend: hf",
            )
        )
    if model.backend == "openai" and not model.base_url:
        found.append(
            Finding(
                "warning",
                f"{key}.base_url",
                "not set: the openai backend then calls api.openai.com; set it to your "
                "server's URL (e.g. http://localhost:8000/v1) unless that is meant",
            )
        )
    if model.backend != "openai" and model.base_url:
        found.append(
            Finding(
                "warning",
                f"{key}.base_url",
                f"ignored by the {model.backend} backend; remove it or set {key}.backend: openai",
            )
        )
    return found


def _name_problem(name: str) -> str | None:
    """Why a bundled name or local model path cannot be loaded; None for hub ids."""
    if name.startswith("bundled:") and name not in BUNDLED:
        return f"unknown bundled model {name}; bundled models: {', '.join(BUNDLED)}"
    if name.startswith((".", "/", "~")) and not Path(name).expanduser().exists():
        return f"{name} does not exist; give a model folder, a bundled name or a hub id"
    return None


def _filter_findings(cfg: RunConfig) -> list[Finding]:
    """Length filters that drop every row."""
    found = []
    for text in ("prompt", "completion"):
        low = getattr(cfg.import_, f"min_{text}_chars")
        high = getattr(cfg.import_, f"max_{text}_chars")
        if high is not None and low > high:
            found.append(
                Finding(
                    "error",
                    f"import.min_{text}_chars",
                    f"{low} is above import.max_{text}_chars ({high}): every row would be "
                    "dropped; lower the one or raise the other",
                )
            )
    return found


def _cluster_findings(cfg: RunConfig) -> list[Finding]:
    """Cluster-size settings that contradict each other."""
    c = cfg.cluster
    if c.min_size <= c.mean_size <= c.max_size:
        return []
    return [
        Finding(
            "warning",
            "cluster.mean_size",
            f"{c.mean_size} is outside [cluster.min_size, cluster.max_size] = "
            f"[{c.min_size}, {c.max_size}]: most drawn sizes are clipped to a bound; "
            "set it between them",
        )
    ]


def pool_size(cfg: RunConfig) -> int | None:
    """At most how many rows the import stage can keep, when the sources say so cheaply
    (sample sizes, JSONL line counts, Parquet metadata), after `sample`, `limit` and the
    hold-out; None when a source's size cannot be known without reading it."""
    sizes = []
    if not cfg.import_.sources:
        return None  # the source check says so
    for source in cfg.import_.sources:
        rows = _rows_in(source.path)
        if source.sample is not None:
            rows = source.sample if rows is None else min(rows, source.sample)
        if rows is None:
            return None
        sizes.append(rows)
    total = sum(sizes)
    for cap in (cfg.import_.sample, cfg.import_.limit):
        total = total if cap is None else min(total, cap)
    held = round(total * cfg.import_.holdout_fraction)
    if cfg.import_.holdout_max is not None:
        held = min(held, cfg.import_.holdout_max)
    return total - held


def _rows_in(path: str) -> int | None:
    """Rows in a source file, or None when unknown (an unreadable, large or other file)."""
    try:
        file = builtin_path(path) if path in BUILTIN_SOURCES else Path(path)
        if file.suffix == ".jsonl" and file.is_file():
            if file.stat().st_size > MAX_COUNTED_BYTES:
                return None
            with file.open("rb") as handle:
                return sum(1 for line in handle if line.strip())
        if file.suffix == ".parquet" and file.is_file():
            import pyarrow.parquet as pq

            return pq.ParquetFile(file).metadata.num_rows
    except (OSError, ValueError, RuntimeError):
        return None  # the source check reports a missing or unreadable source
    return None


def _budget_findings(cfg: RunConfig, pool: int | None) -> list[Finding]:
    """A budget the pool cannot fill (an error: select would stop), or a mix it cannot keep."""
    if pool is None:
        return []
    budget = cfg.select.budget
    if budget > pool:
        return [
            Finding(
                "error",
                "select.budget",
                f"{budget:,} rows, but the sources give at most {pool:,} (sample sizes and "
                "row counts, before filters); lower select.budget or import more",
            )
        ]
    distilled_max = pool // cfg.cluster.min_size
    wanted = round(budget * cfg.select.mixup_ratio)
    if wanted > distilled_max:
        return [
            Finding(
                "warning",
                "select.mixup_ratio",
                f"wants {wanted:,} distilled rows, but {pool:,} pool rows make at most "
                f"{distilled_max:,} clusters of cluster.min_size {cfg.cluster.min_size}: "
                "originals fill the rest; lower the ratio or the budget",
            )
        ]
    return []
