"""`lmmixup experiment`: the paper's comparison in one resumable run (SPEC stages 5 and 9).

From one pool: the method's pipeline (`lmmixup run`), then a `decontaminate` stage that drops
every candidate row sharing an n-gram with the evaluation data, then one stage per arm
(`arm-<name>`: select at the budget, fine-tune the base model, evaluate), one for the untuned
base model, and the table (`experiment/results.json` and `results.md`). Every arm is a stage
of the run directory, so a crash loses at most one arm's progress (and the fine-tune inside
it resumes from its last checkpoint).

Arms: the baselines of `lmmixup select --baseline` (`high-low-a:b` fixes the high:low share)
and `mixup-a:b` (distilled : original, the method). All but `full` train on exactly the
budget.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import Field

from lmmixup.config import DEFAULT_LM, RunConfig, Section, SelectConfig, result_config, validate
from lmmixup.errors import LmmixupError
from lmmixup.io.jsonl import read_records, write_records, write_text_atomic
from lmmixup.markdown import markdown_table
from lmmixup.runtime.runner import StageDir, run_stage, stage_is_current

DEFAULT_ARMS = [
    "random",
    "full",
    "high-only",
    "low-only",
    "high-low-5:5",
    "label-filtered",
    "ds2-like",
    "mixup-3:7",
    "mixup-5:5",
    "mixup-7:3",
]
BASE_ARM = "base"
TABLE_DIR = "experiment"
# Candidate files the arms select from, cleaned by the decontaminate stage.
CANDIDATES = {"rated": ("rate", "rated"), "high": ("split", "high"), "kept": ("rerate", "kept")}
_RATIO_ARM = re.compile(r"^(mixup|high-low)-(\d+(?:\.\d+)?:\d+(?:\.\d+)?)$")
_FIXED_KEYS = {"train", "model", "output_dir"}
EvalSets = dict[str, list[str]]  # task name -> the text of each of its items


class ExperimentConfig(Section):
    """The `experiment:` section: which arms, which base model, how each is trained and tested."""

    base_model: str = Field(
        DEFAULT_LM, description="The model every arm fine-tunes (and the untuned row of the table)."
    )
    arms: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ARMS),
        min_length=1,
        description="random, full, high-only, low-only, label-filtered, ds2-like, high-low-A:B (high:low), mixup-A:B (distilled:original).",
    )
    finetune: dict[str, Any] = Field(
        default_factory=dict,
        description="`lmmixup finetune` options for every arm (epochs, max_length, batch_size, lora, ...).",
    )
    eval: dict[str, Any] = Field(
        default_factory=dict,
        description="`lmmixup eval downstream` options (tasks, limit, batch_size, ...); the held-out task reads the import stage's held-out rows.",
    )
    decontaminate: bool = Field(
        True, description="Drop candidate rows that share an n-gram with the evaluation data."
    )
    decontam_n: int = Field(13, ge=1, description="Words per n-gram for decontamination.")
    keep_models: bool = Field(
        False,
        description="Keep each arm's fine-tuned model (about the base model's size each); off: deleted once evaluated.",
    )


def parse_arm(name: str) -> tuple[str, float | None]:
    """(kind, ratio): a baseline name with None, or `mixup` / `high-low` with its first share."""
    from lmmixup.method.selection import parse_ratio
    from lmmixup.stages.select import BASELINES

    matched = _RATIO_ARM.match(name)
    if matched:
        return matched.group(1), parse_ratio(matched.group(2))
    if name in BASELINES and name != "high-low":
        return name, None
    raise LmmixupError(
        f"unknown arm {name!r}: use one of {', '.join(b for b in BASELINES if b != 'high-low')}, "
        "high-low-A:B or mixup-A:B"
    )


def arm_slug(name: str) -> str:
    """A file- and label-safe name: `mixup-3:7` -> `mixup-3to7`."""
    return name.replace(":", "to")


def _finetune_config(exp: ExperimentConfig, train: Path, output_dir: Path):
    from lmmixup.training.finetune import FinetuneConfig

    fixed = _FIXED_KEYS & set(exp.finetune)
    if fixed:
        raise LmmixupError(f"experiment.finetune: {sorted(fixed)} are set by the experiment")
    return validate(
        FinetuneConfig,
        {
            **exp.finetune,
            "train": str(train),
            "model": exp.base_model,
            "output_dir": str(output_dir),
        },
        "experiment.finetune",
    )


def _eval_config(exp: ExperimentConfig, output_dir: Path, heldout: Path | None):
    """The downstream config of every arm; the held-out task reads `heldout` (None: no rows)."""
    from lmmixup.evalsuite import HELDOUT_TASK
    from lmmixup.evaluation.downstream import DownstreamConfig

    cfg = validate(DownstreamConfig, {**exp.eval, "output_dir": str(output_dir)}, "experiment.eval")
    if HELDOUT_TASK not in cfg.tasks:
        return cfg
    if heldout is None:
        raise LmmixupError(
            f"{HELDOUT_TASK} needs held-out rows: set import.holdout_fraction above 0"
        )
    return cfg.model_copy(update={"heldout": str(heldout)})


def _rows_or_none(path: Path) -> Path | None:
    return path if path.exists() and path.stat().st_size else None


def _eval_sets(exp: ExperimentConfig, heldout: Path | None) -> EvalSets:
    """The text of every evaluation item per task, for decontamination."""
    from lmmixup.evalsuite import eval_texts

    return eval_texts(_eval_config(exp, Path("."), heldout).tasks, heldout)


def check_config(cfg: RunConfig, exp: ExperimentConfig) -> None:
    """Fail before any work on an unknown arm, a bad sub-config or a held-out task without rows."""
    for arm in exp.arms:
        parse_arm(arm)
    _finetune_config(exp, Path("train.jsonl"), Path("."))
    _eval_config(exp, Path("."), Path("heldout.jsonl") if cfg.import_.holdout_fraction else None)


# ---------------------------------------------------------------------------- stages


def _decontaminate_body(
    stage: StageDir, exp: ExperimentConfig, files: dict[str, Path], eval_sets: EvalSets
) -> None:
    from lmmixup.stages.decontaminate import decontaminate

    dropped_all: list[dict] = []
    for name, path in files.items():
        rows = read_records(path)
        if exp.decontaminate:
            kept, dropped, report = decontaminate(rows, eval_sets, exp.decontam_n)
            stage.counts[name] = report.to_dict()
            dropped_all += [{**row, "file": str(path)} for row in dropped]
        else:
            kept = rows
        write_records(stage.file(f"{name}.jsonl"), kept)
    write_records(stage.file("rejects.jsonl"), dropped_all)
    stage.counts["dropped"] = len(dropped_all)


def _select_arm(arm: str, clean: dict[str, Path], output: Path, select: SelectConfig) -> dict:
    from lmmixup.stages.select import select_baseline, select_files

    kind, ratio = parse_arm(arm)
    if kind == "mixup":
        return select_files(
            clean["high"], clean["kept"], output, select.model_copy(update={"mixup_ratio": ratio})
        )
    if kind == "high-low":  # the baseline takes 1 - mixup_ratio as the high share
        select = select.model_copy(update={"mixup_ratio": 1 - ratio})
    # High and low are what the run's split stage called them (it may take a top fraction).
    return select_baseline(kind, clean["rated"], output, select, high=clean["high"])


def _check_selectable(
    arms: list[str], clean: dict[str, Path], select: SelectConfig, run_dir: Path
) -> None:
    """Select every arm once before any fine-tune, so an arm whose candidates cannot fill the
    budget stops the run now instead of after the arms before it have trained."""
    from lmmixup.method.selection import ShortfallError

    with tempfile.TemporaryDirectory(dir=run_dir, prefix=".check-") as folder:
        for arm in arms:
            try:
                _select_arm(arm, clean, Path(folder) / "train.jsonl", select)
            except ShortfallError as exc:
                raise LmmixupError(
                    f"arm {arm} cannot fill the budget of {select.budget} rows ({exc}): "
                    "lower select.budget or leave the arm out"
                ) from None


def _evaluate(
    stage: StageDir, label: str, model: str, exp: ExperimentConfig, heldout: Path | None
) -> None:
    from lmmixup.evaluation.downstream import evaluate_models

    cfg = _eval_config(exp, stage.file("eval"), heldout)
    result = evaluate_models({label: model}, cfg)["models"][label]
    stage.counts["scores"] = {task: value["primary"] for task, value in result["tasks"].items()}
    stage.counts["average"] = result["average"]


def _arm_body(
    stage: StageDir,
    arm: str,
    cfg: RunConfig,
    exp: ExperimentConfig,
    clean: dict[str, Path],
    heldout: Path | None,
    eval_sets: EvalSets,
) -> None:
    from lmmixup.stages.decontaminate import find_contaminated
    from lmmixup.training.finetune import finetune

    train = stage.file("train.jsonl")
    _select_arm(arm, clean, train, cfg.select)
    rows = read_records(train)
    if parse_arm(arm)[0] != "full" and len(rows) != cfg.select.budget:
        raise LmmixupError(f"arm {arm}: {len(rows)} training rows, budget {cfg.select.budget}")
    leaks = find_contaminated(rows, eval_sets)
    stage.counts["train_rows"] = len(rows)
    stage.counts["origin"] = _tally(rows, "origin")
    stage.counts["source"] = _tally(rows, "source")
    stage.counts["contaminated_rows"] = len(leaks.matches)
    model_dir = stage.file("model")
    summary = finetune(_finetune_config(exp, train, model_dir))
    stage.counts["finetune"] = {k: summary[k] for k in ("global_step", "loss", "seconds")}
    _evaluate(stage, arm_slug(arm), summary["final"], exp, heldout)
    if not exp.keep_models:  # steps.jsonl and summary.json stay for the report
        for weights in [Path(summary["final"]), *model_dir.glob("checkpoint-*")]:
            shutil.rmtree(weights)


def _tally(rows: list[dict], key: str) -> dict[str, int]:
    return dict(Counter(str(row.get(key)) for row in rows))


# ---------------------------------------------------------------------------- the run


def run_experiment(
    cfg: RunConfig, exp: ExperimentConfig, run_dir: str | Path, force: bool = False
) -> dict:
    """The pipeline, decontamination, every arm and the base model; writes and returns the table."""
    from lmmixup.workflows.pipeline import run_pipeline

    check_config(cfg, exp)
    run_dir = Path(run_dir)
    summary = run_pipeline(cfg, run_dir, force=force)
    outputs = {key: Path(path) for key, path in summary["outputs"].items()}
    heldout_file = outputs["import.heldout"]
    heldout = _rows_or_none(heldout_file)
    eval_sets = _eval_sets(exp, heldout)
    candidates = {name: outputs[f"{stage}.{key}"] for name, (stage, key) in CANDIDATES.items()}
    exp_json = result_config(exp)
    clean_stage = run_stage(
        run_dir,
        "decontaminate",
        inputs=[*candidates.values(), heldout_file],
        config={"experiment": exp_json},
        body=lambda stage: _decontaminate_body(stage, exp, candidates, eval_sets),
        force=force,
        follow_inputs=True,
    )
    clean = {name: clean_stage.path / f"{name}.jsonl" for name in candidates}
    arm_inputs = [*clean.values(), heldout_file]
    arm_configs = {
        arm: {"arm": arm, "select": result_config(cfg.select), "experiment": exp_json}
        for arm in exp.arms
    }
    pending = [
        arm
        for arm in exp.arms
        if not stage_is_current(run_dir, f"arm-{arm_slug(arm)}", arm_inputs, arm_configs[arm])
    ]
    _check_selectable(pending, clean, cfg.select, run_dir)
    manifests = {}
    for arm in exp.arms:
        manifests[arm] = run_stage(
            run_dir,
            f"arm-{arm_slug(arm)}",
            inputs=arm_inputs,
            config=arm_configs[arm],
            body=lambda stage, arm=arm: _arm_body(stage, arm, cfg, exp, clean, heldout, eval_sets),
            force=force,
            follow_inputs=True,
        ).manifest
    manifests[BASE_ARM] = run_stage(
        run_dir,
        f"arm-{BASE_ARM}",
        inputs=[heldout_file],
        config={"experiment": exp_json},
        body=lambda stage: _evaluate(stage, BASE_ARM, exp.base_model, exp, heldout),
        force=force,
        follow_inputs=True,
    ).manifest
    table = write_table(run_dir, manifests)
    from lmmixup.report import write_report

    write_report(run_dir)  # again, now with the arms' training curves and the table
    return table


def write_table(run_dir: Path, manifests: dict[str, dict]) -> dict:
    """`experiment/results.json` (rows = arms, values per task, average, training rows) and
    `results.md`; returns the JSON."""
    tasks: list[str] = []
    rows = []
    for arm, manifest in manifests.items():
        counts = manifest.get("counts", {})
        scores = counts.get("scores", {})
        tasks += [task for task in scores if task not in tasks]
        rows.append(
            {
                "arm": arm,
                "values": scores,
                "average": counts.get("average"),
                "train_rows": counts.get("train_rows", 0),
                "origin": counts.get("origin", {}),
            }
        )
    table = {"tasks": tasks, "rows": rows}
    folder = run_dir / TABLE_DIR
    write_text_atomic(folder / "results.json", json.dumps(table, indent=2) + "\n")
    write_text_atomic(folder / "results.md", markdown(table))
    return table


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def markdown(table: dict) -> str:
    """The table as Markdown: one row per arm, a column per task, the average, the rows used."""
    tasks = table["tasks"]
    rows = [
        [
            row["arm"],
            row["train_rows"],
            *(_cell(row["values"].get(task)) for task in tasks),
            _cell(row["average"]),
        ]
        for row in table["rows"]
    ]
    header = ["arm", "train rows", *tasks, "average"]
    return "\n".join(markdown_table(header, rows, right_from=1)) + "\n"


# ---------------------------------------------------------------------------- config


def _merged(base: dict, extra: dict) -> dict:
    """`base` with `extra` laid over it, section by section."""
    out = dict(base)
    for key, value in extra.items():
        both_dicts = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if both_dicts else value
    return out


def bundled_experiment() -> dict:
    """The miniature experiment: the bundled demo plus configs/experiment.yaml."""
    from importlib import resources

    from lmmixup.config import load_yaml
    from lmmixup.workflows.pipeline import demo_config

    text = resources.files("lmmixup") / "configs" / "experiment.yaml"
    with resources.as_file(text) as path:
        return _merged(demo_config(), load_yaml(path))


def load_experiment_config(
    path: str | Path | None, overrides: list[str]
) -> tuple[RunConfig, ExperimentConfig]:
    """The run sections and the `experiment:` section of a YAML file (none: the bundled
    miniature experiment), with dotted overrides applied to either."""
    from lmmixup.config import apply_overrides, load_yaml
    from lmmixup.workflows.pipeline import check_run_config

    data = load_yaml(path) if path else bundled_experiment()
    apply_overrides(data, overrides)
    origin = str(path) if path else "bundled experiment config"
    exp = validate(ExperimentConfig, data.pop("experiment", None) or {}, f"{origin}: experiment")
    run = validate(RunConfig, data, origin)
    check_run_config(run, origin)
    return run, exp
