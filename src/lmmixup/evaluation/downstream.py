"""SPEC stage 9, second part: lm-evaluation-harness benchmarks on one or more models, offline.

The shipped suite (`lmmixup.evalsuite`) reads local data only:
`lmmixup_gsm8k` (GSM8K 8-shot, exact match on the final number), `lmmixup_gsm8k_mc` (the same
questions as 4-way multiple choice) and `lmmixup_heldout` (log-likelihood of held-out reference
completions, from the `--heldout` prompt/completion JSONL). Any other lm-eval task name (or the
path of a task YAML) is passed through to lm-eval as is.

Built-in lm-eval tasks download their data from the Hugging Face Hub, which fails offline.
To run one on local files, write a YAML that includes the built-in file and replaces only its
data source (prompt, filters and metrics stay the built-in ones), then pass the YAML's path as
a task:

    include: /path/to/site-packages/lm_eval/tasks/gsm8k/gsm8k.yaml
    task: gsm8k_local
    tag: []
    dataset_path: json
    dataset_name: null      # required when the built-in names a dataset config
    dataset_kwargs:
      data_files: {train: gsm8k_train.jsonl, test: gsm8k_test.jsonl}

Outputs in the output folder: `models/<label>.json` as soon as each model finishes (a re-run
skips a model whose file holds the same settings), then `results.json` and `results.md`
(rows = models, columns = each task's primary metric and their average).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from lmmixup import evalsuite
from lmmixup.config import OPERATIONAL, Section, result_config
from lmmixup.errors import LmmixupError
from lmmixup.hashing import hash_file, hash_value
from lmmixup.io.assets import model_fingerprint, resolve_model
from lmmixup.markdown import markdown_table
from lmmixup.progress import progress
from lmmixup.runtime.manifest import read_manifest, write_manifest

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
MODELS_DIR = "models"
OFFLINE_HINT = (
    "its data is on the Hugging Face Hub, which is unreachable; point it at local files with a "
    "task YAML that has `include: <the built-in YAML>`, a new `task:` name, `tag: []`, "
    "`dataset_path: json`, `dataset_name: null` "
    "and `dataset_kwargs: {data_files: {test: FILE, ...}}`, and pass that YAML's path as the task "
    "(see `lmmixup eval downstream --help`)"
)
_LABEL = re.compile(r"^[A-Za-z0-9_.-]+$")


class DownstreamConfig(Section):
    """`lmmixup eval downstream`: which lm-eval tasks, how much of them, how models are run."""

    tasks: list[str] = Field(
        default_factory=lambda: list(evalsuite.SHIPPED_TASKS),
        min_length=1,
        description="lm-eval tasks: the shipped offline suite (lmmixup_gsm8k, lmmixup_gsm8k_mc, lmmixup_heldout), any lm-eval task name, or a task YAML path.",
    )
    heldout: str | None = Field(
        None, description="lmmixup_heldout: held-out prompt/completion JSONL no selection touched."
    )
    limit: int | None = Field(
        None, ge=1, description="Evaluate only the first N items of each task (null = all)."
    )
    num_fewshot: int | None = Field(
        None,
        ge=0,
        description="Override every task's shots (tasks that are 0-shot by design stay 0-shot).",
    )
    max_gen_toks: int = Field(
        256, ge=1, description="Tokens a model may write per item in generation tasks."
    )
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", description="Weights dtype (auto = bf16 only where the hardware runs it natively)."
    )
    chat_template: bool = Field(
        False,
        description="Wrap prompts in each model's chat template (few-shot as a multi-turn chat).",
    )
    batch_size: int = Field(
        8, ge=1, description="Requests per forward pass.", json_schema_extra=OPERATIONAL
    )
    output_dir: str = Field(
        "runs/eval/downstream",
        description="Folder for models/<label>.json, results.json and results.md.",
        json_schema_extra=OPERATIONAL,
    )


# ---------------------------------------------------------------------------- tasks


def quiet_lm_eval() -> None:
    """Keep lm-eval and datasets to errors only, unless lmmixup logs at debug level."""
    if logging.getLogger("lmmixup").getEffectiveLevel() <= logging.DEBUG:
        return
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()


def check_settings(cfg: DownstreamConfig) -> None:
    """Errors the configuration holds, found before any model is loaded."""
    unknown = [
        task
        for task in cfg.tasks
        if task.startswith("lmmixup_")
        and task not in evalsuite.SHIPPED_TASKS
        and not Path(task).is_file()
    ]
    if unknown:
        shipped = ", ".join(evalsuite.SHIPPED_TASKS)
        raise LmmixupError(f"unknown task {unknown[0]!r}; the shipped tasks are {shipped}")
    if evalsuite.HELDOUT_TASK in cfg.tasks:
        if cfg.heldout is None:
            raise LmmixupError(
                f"{evalsuite.HELDOUT_TASK} needs --heldout FILE (prompt/completion JSONL); "
                "or leave it out of --tasks"
            )
        evalsuite.read_heldout(cfg.heldout)
    shots = len(evalsuite.GSM8K_FEWSHOT_ROWS)
    if evalsuite.GSM8K_TASK in cfg.tasks and (cfg.num_fewshot or 0) > shots:
        raise LmmixupError(f"--num-fewshot: {evalsuite.GSM8K_TASK} has {shots} shots")


def task_manager(cfg: DownstreamConfig):
    """lm-eval's task manager over the shipped suite; lm-eval's own tasks only when named
    (indexing them takes seconds)."""
    from lm_eval.tasks import TaskManager

    builtins = any(task not in evalsuite.SHIPPED_TASKS for task in cfg.tasks)
    return TaskManager(
        include_path=str(evalsuite.SUITE_DIR),
        include_defaults=builtins,
        metadata={"heldout_file": str(Path(cfg.heldout).resolve())} if cfg.heldout else None,
    )


def load_tasks(manager: Any, tasks: list[str]) -> None:
    """Build every task once (reading its data), so a bad name or unreachable data fails early
    with the task's name."""
    for task in tasks:
        try:
            manager.load([task])
        except KeyError:
            raise LmmixupError(
                f"unknown task {task!r}: not a shipped task ({', '.join(evalsuite.SHIPPED_TASKS)}), "
                "an lm-eval task name (`lm-eval ls tasks`) or a task YAML path"
            ) from None
        except ConnectionError:
            raise LmmixupError(f"task {task!r}: {OFFLINE_HINT}") from None


def suite_hash() -> str:
    """Identifies the shipped suite's YAMLs and code, so a changed task invalidates old results."""
    files = sorted(evalsuite.SUITE_DIR.glob("*.yaml")) + sorted(evalsuite.SUITE_DIR.glob("*.py"))
    return hash_value([(path.name, path.read_text(encoding="utf-8")) for path in files])


# ---------------------------------------------------------------------------- models


def model_settings(model: str, cfg: DownstreamConfig) -> dict[str, Any]:
    """What a model's results depend on; equal settings let a re-run reuse its file."""
    return {
        "model": model_fingerprint(model),
        "config": result_config(cfg),
        "heldout": hash_file(cfg.heldout) if evalsuite.HELDOUT_TASK in cfg.tasks else None,
        "task_files": {task: hash_file(task) for task in cfg.tasks if Path(task).is_file()},
        "suite": suite_hash(),
        "lm_eval": metadata.version("lm_eval"),
    }


def model_args(model: str, dtype: str) -> dict[str, str]:
    """lm-eval `hf` arguments: the local folder (bundled names resolved) and a concrete dtype."""
    from lmmixup.backends.hf import pick_dtype

    return {"pretrained": resolve_model(model), "dtype": str(pick_dtype(dtype)).split(".")[-1]}


def run_lm_eval(model: str, cfg: DownstreamConfig, manager: Any) -> dict[str, Any]:
    """One model through lm-eval's `simple_evaluate`; the parts of its output worth keeping."""
    import lm_eval
    import torch

    output = lm_eval.simple_evaluate(
        model="hf",
        model_args=model_args(model, cfg.dtype),
        tasks=list(cfg.tasks),
        num_fewshot=cfg.num_fewshot,
        batch_size=cfg.batch_size,
        device="cuda" if torch.cuda.is_available() else "cpu",
        limit=cfg.limit,
        log_samples=False,
        task_manager=manager,
        apply_chat_template=cfg.chat_template,
        fewshot_as_multiturn=cfg.chat_template,
        gen_kwargs={"max_gen_toks": cfg.max_gen_toks},
    )
    keep = ("results", "group_subtasks", "higher_is_better", "n-shot", "n-samples", "versions")
    return {key: output.get(key) for key in keep}


def evaluate_models(models: Mapping[str, str], cfg: DownstreamConfig) -> dict[str, Any]:
    """Run the tasks on every model (label -> checkpoint path or bundled name); write the reports.

    Each model's file is written as soon as it finishes; a model whose file holds the same
    settings is not evaluated again. Returns what OUT/results.json holds.
    """
    if not models:
        raise LmmixupError("give at least one model: MODEL or LABEL=MODEL")
    bad = [label for label in models if not _LABEL.match(label)]
    if bad:
        raise LmmixupError(f"model label {bad[0]!r}: use letters, digits, '_', '.' and '-'")
    check_settings(cfg)
    for model in models.values():
        resolve_model(model)  # a missing path fails before any model is evaluated
    quiet_lm_eval()
    manager = task_manager(cfg)
    load_tasks(manager, cfg.tasks)
    out = Path(cfg.output_dir)
    per_model: dict[str, dict] = {}
    with progress("eval downstream", total=len(models), unit="model") as advance:
        for label, model in models.items():
            per_model[label] = evaluate_one(label, model, cfg, manager, out / MODELS_DIR)
            advance()
    results = summarise(per_model, cfg)
    (out / RESULTS_JSON).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / RESULTS_MD).write_text(results_markdown(results), encoding="utf-8")
    return results


def evaluate_one(label: str, model: str, cfg: DownstreamConfig, manager: Any, folder: Path) -> dict:
    """One model's results, from its file when the settings match, else from a fresh run."""
    path = folder / f"{label}.json"
    settings = model_settings(model, cfg)
    saved = read_manifest(path)
    if saved is not None and saved.get("settings") == settings:
        return saved | {"skipped": True}
    started = time.perf_counter()
    output = run_lm_eval(model, cfg, manager)
    result = {
        "model": model,
        "settings": settings,
        "seconds": round(time.perf_counter() - started, 1),
    }
    result |= output
    folder.mkdir(parents=True, exist_ok=True)
    write_manifest(path, result)
    return result | {"skipped": False}


# ---------------------------------------------------------------------------- the report


def task_metrics(entry: Mapping[str, Any]) -> dict[str, float]:
    """`metric,filter` -> value of one task's lm-eval results (no stderr, no alias)."""
    return {
        key: value
        for key, value in entry.items()
        if "," in key and "_stderr," not in key and isinstance(value, int | float)
    }


def primary_metric(task: str, metrics: Mapping[str, float], higher: Mapping[str, bool]) -> str:
    """The shipped task's declared metric; for other tasks the first higher-is-better one."""
    if task in evalsuite.PRIMARY_METRICS:
        return evalsuite.PRIMARY_METRICS[task]
    better = [key for key in metrics if higher.get(key.split(",")[0]) is True]
    return (better or list(metrics))[0]


def table_tasks(output: Mapping[str, Any]) -> list[str]:
    """Tasks that get a column: top-level results (a group, not its members)."""
    members = {m for subtasks in (output.get("group_subtasks") or {}).values() for m in subtasks}
    return [task for task in output["results"] if task not in members]


def summarise(per_model: Mapping[str, dict], cfg: DownstreamConfig) -> dict[str, Any]:
    """Per model: every task's metrics, the primary ones and their average."""
    models: dict[str, Any] = {}
    primaries: dict[str, str] = {}
    for label, result in per_model.items():
        tasks: dict[str, Any] = {}
        averaged = []
        for task in table_tasks(result):
            metrics = task_metrics(result["results"][task])
            higher = (result.get("higher_is_better") or {}).get(task, {})
            primary = primaries.setdefault(task, primary_metric(task, metrics, higher))
            tasks[task] = {"metrics": metrics, "primary": metrics.get(primary)}
            if higher.get(primary.split(",")[0], True) and tasks[task]["primary"] is not None:
                averaged.append(tasks[task]["primary"])
        models[label] = {
            "model": result["model"],
            "seconds": result["seconds"],
            "skipped": result["skipped"],
            "tasks": tasks,
            "average": sum(averaged) / len(averaged) if averaged else None,
        }
    return {"config": cfg.model_dump(mode="json"), "primary_metrics": primaries, "models": models}


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def results_markdown(results: Mapping[str, Any]) -> str:
    """The comparison table (rows = models, columns = primary metrics + average), then every
    metric per task."""
    models, primaries = results["models"], results["primary_metrics"]
    tasks = list(primaries)
    head = [f"{task} ({primaries[task]})" for task in tasks]
    lines = [
        "# Downstream evaluation (lm-evaluation-harness)",
        "",
        *markdown_table(
            ["model", *head, "average"],
            [
                [
                    label,
                    *(_cell(entry["tasks"].get(task, {}).get("primary")) for task in tasks),
                    _cell(entry["average"]),
                ]
                for label, entry in models.items()
            ],
            right_from=1,
        ),
    ]
    lines += ["", "Average: mean of the higher-is-better primary metrics.", ""]
    lines += [f"- **{label}**: `{entry['model']}`" for label, entry in models.items()]
    for task in tasks:
        keys = list(
            dict.fromkeys(
                k for e in models.values() for k in e["tasks"].get(task, {}).get("metrics", {})
            )
        )
        rows = [
            [label, *(_cell(entry["tasks"].get(task, {}).get("metrics", {}).get(k)) for k in keys)]
            for label, entry in models.items()
        ]
        lines += ["", f"## {task}", "", *markdown_table(["model", *keys], rows, right_from=1)]
    return "\n".join(lines) + "\n"
