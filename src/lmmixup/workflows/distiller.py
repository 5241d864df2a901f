"""`lmmixup train distiller`: the distiller recipe as one resumable run (SPEC stages 6-9).

Seven stages, each a folder of the run directory run by `runtime.runner.run_stage` (manifest,
skip when done, refuse on change, resume when interrupted):

    mixture  MIXTURE data from the seeds            -> sft/grpo_train/grpo_test.jsonl, card
    pool     a small pool for the quality library   -> pool.jsonl, rejects.jsonl
    rate     the pool rated (judge + kNN-Bayes)     -> rated.jsonl, rejects.jsonl
    library  the quality reward's kNN-Bayes library -> quality-library/
    sft      cold-start SFT                         -> checkpoints, steps.jsonl, final/
    grpo     GRPO from sft/final with the rewards   -> checkpoints, steps.jsonl, final/
    eval     base vs sft vs grpo on grpo_test.jsonl -> results.json/.md, generations/

An interrupted stage's manifest says `running`; the runner then calls the stage again without
clearing its folder, so the trainers continue from the last checkpoint they wrote there
(`training.trainer.run_training`) and the rater and evaluator from the call cache. A stage
whose config or inputs changed is refused unless `force`; a stage after one that was redone
is redone too (its inputs changed because the run itself changed them).

The config, one section per stage, is `workflows.distiller_config.DistillerRunConfig`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmmixup.config import to_yaml
from lmmixup.evaluation.distiller import ModelSpec
from lmmixup.io.assets import BUILTIN_SOURCES, builtin_path
from lmmixup.io.jsonl import write_text_atomic
from lmmixup.io.outputs import run_dir_lock
from lmmixup.runtime.runner import StageDir, StageResult, run_summary
from lmmixup.runtime.spec import StageSpec, run_specs
from lmmixup.training.trainer import FINAL_DIR, SUMMARY_FILE
from lmmixup.workflows.distiller_config import (
    LIBRARY_DIR,
    RESOLVED_NOTE,
    DistillerRunConfig,
    eval_settings,
    grpo_settings,
    resolved,
)
from lmmixup.workflows.health import RunWarning

WEIGHTS = f"{FINAL_DIR}/model.safetensors"


# ---------------------------------------------------------------------------- the stages


def _mixture(stage: StageDir, cfg: DistillerRunConfig, _: dict[str, Path]) -> None:
    from lmmixup.mixture import build_mixture

    card = build_mixture(cfg.mixture, stage.path)
    stage.counts.update(
        records=card["records"],
        cross_topic=card["cross_topic"],
        splits=card["splits"],
        seed_rows_rejected=card["seeds"]["rejected_rows"],
    )


def _pool(stage: StageDir, cfg: DistillerRunConfig, _: dict[str, Path]) -> None:
    from lmmixup.errors import LmmixupError
    from lmmixup.stages.import_pool import import_pool

    result = import_pool(
        cfg.pool.sources, stage.file("pool.jsonl"), cfg.pool, stage.file("rejects.jsonl")
    )
    stage.counts.update(result.counts())
    if not result.kept:
        raise LmmixupError(
            f"pool: the import kept no rows ({result.rejected:,} rejected -> {result.rejects}); "
            "fix pool.sources or the pool's length limits, then re-run"
        )


def _rate(stage: StageDir, cfg: DistillerRunConfig, inputs: dict[str, Path]) -> None:
    from lmmixup.stages.rate import rate_into

    rate_into(stage, inputs["pool"], cfg.rate)


def _library(stage: StageDir, cfg: DistillerRunConfig, inputs: dict[str, Path]) -> None:
    from lmmixup.backends.embed import load_embedder
    from lmmixup.rewards.library import build_library, class_counts, read_rated, save_library

    records, unrated = read_rated([inputs["rated"]])
    library = build_library(
        records,
        load_embedder(cfg.library.embedder),
        embedder_name=cfg.library.embedder,
        by_task=cfg.library.by_task,
        min_task_samples=cfg.library.min_task_samples,
        k_transition=cfg.library.k_transition,
    )
    save_library(library, stage.file(LIBRARY_DIR), overwrite=True)
    stage.counts.update(
        records=len(records),
        unrated_skipped=unrated,
        scorers={
            name: {str(k): v for k, v in class_counts(scorer).items()}
            for name, scorer in library.scorers.items()
        },
    )


def _training_counts(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("global_step", "resumed_from", "rows", "too_long", "seconds", "mean_step_seconds")
    return {key: summary[key] for key in (*keys, "loss")}


def _sft(stage: StageDir, cfg: DistillerRunConfig, inputs: dict[str, Path]) -> None:
    from lmmixup.training.sft import train_sft

    sft = cfg.sft.model_copy(
        update={"mixture": str(inputs["sft"].parent), "output_dir": str(stage.path)}
    )
    stage.counts.update(_training_counts(train_sft(sft)))


def _grpo(stage: StageDir, cfg: DistillerRunConfig, inputs: dict[str, Path]) -> None:
    from lmmixup.training.grpo import train_grpo

    stage.counts.update(_training_counts(train_grpo(grpo_settings(cfg, inputs, stage.path))))


def eval_models(cfg: DistillerRunConfig, inputs: dict[str, Path]) -> list[ModelSpec]:
    """The models the eval stage compares, labelled base, sft and grpo."""
    paths = {"base": cfg.sft.model, "sft": str(inputs["sft"]), "grpo": str(inputs["grpo"])}
    return [ModelSpec(label, paths[label]) for label in cfg.eval.models]


def _eval(stage: StageDir, cfg: DistillerRunConfig, inputs: dict[str, Path]) -> None:
    from lmmixup.evaluation.distiller import evaluate_distillers

    results = evaluate_distillers(
        eval_models(cfg, inputs), inputs["test"], stage.path, eval_settings(cfg, inputs["library"])
    )
    stage.counts["records"] = results["records"]
    stage.counts["models"] = {
        label: {
            "compliant": result["format"]["compliant"],
            "reward_total": result["rewards"]["total"],
            "judge_overall": result["judge"]["all"]["overall"],
            "judged": result["judge"]["all"]["rated"],
        }
        for label, result in results["models"].items()
    }


STAGES: list[StageSpec] = [
    StageSpec(
        "mixture",
        sections=("mixture",),
        reads={},
        outputs={
            "sft": "sft.jsonl",
            "grpo_train": "grpo_train.jsonl",
            "grpo_test": "grpo_test.jsonl",
            "card": "card.json",
        },
        run=_mixture,
        sources=lambda cfg: _source_files([seed.path for seed in cfg.mixture.seeds]),
    ),
    StageSpec(
        "pool",
        sections=("pool",),
        reads={},
        outputs={"pool": "pool.jsonl", "rejects": "rejects.jsonl"},
        run=_pool,
        sources=lambda cfg: _source_files([source.path for source in cfg.pool.sources]),
    ),
    StageSpec(
        "rate",
        sections=("rate",),
        reads={"pool": "pool.pool"},
        outputs={"rated": "rated.jsonl", "rejects": "rejects.jsonl"},
        run=_rate,
    ),
    StageSpec(
        "library",
        sections=("library",),
        reads={"rated": "rate.rated"},
        outputs={"library": LIBRARY_DIR, "meta": f"{LIBRARY_DIR}/default/meta.json"},
        run=_library,
    ),
    StageSpec(
        "sft",
        sections=("sft",),
        reads={"sft": "mixture.sft"},
        outputs={"final": FINAL_DIR, "weights": WEIGHTS, "summary": SUMMARY_FILE},
        run=_sft,
    ),
    StageSpec(
        "grpo",
        sections=("grpo",),
        reads={
            "grpo_train": "mixture.grpo_train",
            "model": "sft.final",
            "library": "library.library",
        },
        outputs={"final": FINAL_DIR, "weights": WEIGHTS, "summary": SUMMARY_FILE},
        run=_grpo,
    ),
    StageSpec(
        "eval",
        sections=("sft", "grpo", "eval"),
        reads={
            "test": "mixture.grpo_test",
            "library": "library.library",
            "sft": "sft.final",
            "grpo": "grpo.final",
        },
        outputs={"results": "results.json", "table": "results.md"},
        run=_eval,
    ),
]
STAGE_NAMES = [stage.name for stage in STAGES]


def _source_files(paths: list[str]) -> list[Path]:
    """The files a list of sources reads, built-in sources resolved."""
    return [builtin_path(path) if path in BUILTIN_SOURCES else Path(path) for path in paths]


# ---------------------------------------------------------------------------- the run


def run_distiller(cfg: DistillerRunConfig, run_dir: str | Path, force: bool = False) -> dict:
    """Run every stage in order (skipping finished ones, resuming an interrupted one), write
    `summary.json` and the report; holds the run directory's lock throughout."""
    run_dir = Path(run_dir)
    with run_dir_lock(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", RESOLVED_NOTE + to_yaml(resolved(cfg, run_dir)))
        results, outputs = run_specs(run_dir, STAGES, cfg, force)
        return _write_summary(run_dir, results, outputs)


def _write_summary(run_dir: Path, results: list[StageResult], outputs: dict) -> dict:
    from lmmixup.report import REPORT_FILE, write_report

    summary: dict[str, Any] = {
        **run_summary(run_dir, results, outputs),
        "distiller": str(outputs["grpo"]["final"]),
        "warnings": [warning.as_dict() for warning in run_warnings(results)],
        "report": str(run_dir / REPORT_FILE),
    }
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))
    write_report(run_dir)  # after summary.json: a report error loses none of the run's files
    return summary


def run_warnings(results: list[StageResult]) -> list[RunWarning]:
    """What the user must know about the run: unfinished stages, a trained distiller that does
    no better than the model it started from."""
    warnings = [
        RunWarning(
            "stage-unfinished",
            f"stage {r.name} is {r.manifest['status']}: {r.manifest.get('partial_reason', '?')}",
            "re-run the same command to finish it",
        )
        for r in results
        if r.manifest["status"] != "complete"
    ]
    models = next((r for r in results if r.name == "eval"), None)
    models = (models.manifest.get("counts", {}) if models else {}).get("models", {})
    trained = next((label for label in ("grpo", "sft") if label in models), None)
    if "base" not in models or trained is None:
        return warnings
    for key, name in (("compliant", "format compliance"), ("reward_total", "reward total")):
        base, mine = models["base"].get(key), models[trained].get(key)
        if base is not None and mine is not None and mine <= base:
            warnings.append(
                RunWarning(
                    "distiller-not-better",
                    f"the trained distiller ({trained}) is no better than the base model on "
                    f"{name}: {mine} against {base} (eval/results.md)",
                    "train longer (sft.max_steps, grpo.max_steps) or on more data (mixture."
                    "max_examples) before distilling with it",
                )
            )
    return warnings
