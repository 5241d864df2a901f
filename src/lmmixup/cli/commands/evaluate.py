"""`lmmixup eval ...`: evaluate what the pipeline produces (SPEC stage 9)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmmixup.cli.options import (
    SetOpt,
    backend_opt,
    base_url_opt,
    keyed,
    load_section,
    model_opt,
    overrides,
    section_config_opt,
)

eval_app = typer.Typer(
    help="Evaluate distillers on held-out MIXTURE data, and models on lm-eval benchmarks.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

EvalConfigOpt = section_config_opt("eval")
DownstreamConfigOpt = section_config_opt("downstream")
JudgeModelOpt = model_opt("Judge model [bundled:smollm2-135m-instruct]", "eval.judge.model")
JudgeBackendOpt = backend_opt("Judge backend", "eval.judge.backend")
JudgeBaseUrlOpt = base_url_opt("eval.judge.base_url")


@eval_app.callback()
def eval_group() -> None:
    """Evaluate distillers on held-out MIXTURE data, and models on lm-eval benchmarks."""


@eval_app.command(
    "distiller",
    epilog="Examples:\n\n    lmmixup eval distiller bundled:smollm2-135m-instruct runs/distiller/sft/final "
    "runs/distiller/grpo/final --test mixture/grpo_test.jsonl -o runs/eval\n\n"
    "    lmmixup eval distiller base=bundled:smollm2-135m-instruct grpo=runs/distiller/grpo/final "
    "--test mixture/grpo_test.jsonl -o runs/eval --limit 50 "
    "--set rewards.quality_library=quality-library\n\n"
    "    lmmixup eval distiller runs/distiller/grpo/final --test mixture/grpo_test.jsonl -o runs/eval "
    "--judge-backend openai --judge-base-url http://localhost:8000/v1 --judge-model my-judge "
    "--judge-mode generate",
)
def distiller(
    models: Annotated[
        list[str],
        typer.Argument(
            help="Models to compare: MODEL or LABEL=MODEL (a checkpoint path or bundled name)."
        ),
    ],
    test: Annotated[Path, typer.Option(help="Held-out MIXTURE records, e.g. grpo_test.jsonl.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for results.json/.md and generations/.")
    ],
    config: EvalConfigOpt = None,
    sets: SetOpt = None,
    limit: Annotated[
        int | None, typer.Option(help=keyed("eval.limit", "Only the first N test records."))
    ] = None,
    judge_model: JudgeModelOpt = None,
    judge_backend: JudgeBackendOpt = None,
    judge_base_url: JudgeBaseUrlOpt = None,
    judge_mode: Annotated[
        str | None,
        typer.Option(
            help=keyed(
                "eval.judge_mode",
                "logprob (hf judges) | generate | auto [auto: logprob for hf, generate for servers].",
            )
        ),
    ] = None,
    quality_library: Annotated[
        str | None,
        typer.Option(
            help=keyed("eval.rewards.quality_library", "kNN-Bayes library for the quality reward.")
        ),
    ] = None,
) -> None:
    """Generate with each model on the test records (greedy, the distiller's prompt) and compare:
    format compliance, the reward components and their total, and judge ratings of the parsed
    pairs (raw 1-10 and compressed 0-5) per task type. Replies are cached: re-runs are cheap."""
    from lmmixup.evaluation.distiller import EvalDistillerConfig, evaluate_distillers, unique_specs

    flags = {
        "limit": limit,
        "judge.model": judge_model,
        "judge.backend": judge_backend,
        "judge.base_url": judge_base_url,
        "judge_mode": judge_mode,
        "rewards.quality_library": quality_library,
    }
    cfg = load_section(EvalDistillerConfig, config, "eval", overrides(sets, **flags))
    results = evaluate_distillers(unique_specs(models), test, output, cfg)
    for label, result in results["models"].items():
        judged = result["judge"]["all"]
        typer.echo(
            f"{label}: compliant {result['format']['compliant']}, reward total "
            f"{result['rewards']['total']}, judge overall {judged['overall']} "
            f"({judged['rated']}/{result['records']} judged)"
        )
    typer.echo(f"results: {output / 'results.md'} and {output / 'results.json'}")


@eval_app.command(
    "downstream",
    epilog="Examples:\n\n    lmmixup eval downstream base=bundled:smollm2-135m-instruct tuned=runs/x/final "
    "--heldout runs/x/heldout.jsonl -o runs/eval/downstream\n\n"
    "    lmmixup eval downstream bundled:smollm2-135m-instruct --tasks lmmixup_gsm8k,lmmixup_gsm8k_mc "
    "--limit 50 -o runs/eval/quick\n\n"
    "    lmmixup eval downstream runs/x/final --tasks my_tasks/gsm8k_local.yaml -o runs/eval/local\n\n"
    "    lmmixup eval downstream runs/x/final -c eval.yaml --set limit=20 --set dtype=float32\n\n"
    "Offline suite: lmmixup_gsm8k (8-shot, exact match on the final number), lmmixup_gsm8k_mc "
    "(4-way multiple choice, acc/acc_norm), lmmixup_heldout (likelihood of --heldout completions, "
    "byte_likelihood: higher is better). Built-in lm-eval tasks (gsm8k, mmlu, ...) fetch data from "
    "the Hub and fail offline: write a YAML with `include: <the built-in YAML path>`, "
    "`dataset_path: json`, `dataset_name: null` and `dataset_kwargs: {data_files: {test: FILE}}` "
    "(plus the few-shot split's file), and pass that YAML's path in --tasks.",
)
def downstream(
    models: Annotated[
        list[str],
        typer.Argument(
            help="Models to evaluate: MODEL or LABEL=MODEL (a checkpoint path or bundled name)."
        ),
    ],
    output_dir: Annotated[
        Path | None,
        typer.Option(
            "--output-dir",
            "-o",
            help=keyed("downstream.output_dir", "Folder for models/*.json, results.json and .md."),
        ),
    ] = None,
    config: DownstreamConfigOpt = None,
    sets: SetOpt = None,
    tasks: Annotated[
        str | None,
        typer.Option(
            help=keyed(
                "downstream.tasks",
                "Comma-separated lm-eval tasks or task YAML paths [the shipped suite].",
            )
        ),
    ] = None,
    heldout: Annotated[
        Path | None,
        typer.Option(
            help=keyed(
                "downstream.heldout", "Held-out prompt/completion JSONL for lmmixup_heldout."
            )
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help=keyed("downstream.limit", "Only the first N items per task."))
    ] = None,
    num_fewshot: Annotated[
        int | None,
        typer.Option(help=keyed("downstream.num_fewshot", "Override the tasks' number of shots.")),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help=keyed("downstream.batch_size", "Requests per forward pass [8].")),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(help=keyed("downstream.dtype", "auto | bfloat16 | float32 [auto].")),
    ] = None,
) -> None:
    """Run lm-evaluation-harness tasks on each model and compare them in one table (rows = models,
    columns = each task's primary metric and their average). Each model's results are saved as
    soon as it finishes; re-running the same command skips finished models."""
    from lmmixup.evaluation.distiller import unique_specs
    from lmmixup.evaluation.downstream import DownstreamConfig, evaluate_models

    flags = {
        "tasks": [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None,
        "heldout": str(heldout) if heldout else None,
        "output_dir": str(output_dir) if output_dir else None,
        "limit": limit,
        "num_fewshot": num_fewshot,
        "batch_size": batch_size,
        "dtype": dtype,
    }
    cfg = load_section(DownstreamConfig, config, "downstream", overrides(sets, **flags))
    results = evaluate_models({s.label: s.model for s in unique_specs(models)}, cfg)
    _print_downstream(results)
    typer.echo(f"results: {Path(cfg.output_dir) / 'results.md'} and results.json")


def _print_downstream(results: dict) -> None:
    """The primary metrics per model as a table."""
    from rich.console import Console
    from rich.table import Table

    primaries = results["primary_metrics"]
    table = Table(title="lmmixup eval downstream")
    for column in ("model", *(f"{t}\n{m}" for t, m in primaries.items()), "average"):
        table.add_column(column)
    for label, entry in results["models"].items():
        cells = [entry["tasks"].get(task, {}).get("primary") for task in primaries]
        status = " (saved)" if entry["skipped"] else ""
        values = [f"{v:.4f}" if v is not None else "–" for v in (*cells, entry["average"])]
        table.add_row(label + status, *values)
    Console().print(table)
