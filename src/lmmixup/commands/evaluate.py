"""`lmmixup eval ...`: evaluate what the pipeline produces (SPEC stage 9)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

eval_app = typer.Typer(
    help="Evaluate distillers on held-out MIXTURE data.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)


@eval_app.callback()
def eval_group() -> None:
    """Evaluate distillers on held-out MIXTURE data."""


@eval_app.command(
    "distiller",
    epilog="Examples:\n\n    lmmixup eval distiller bundled:smollm2-135m-instruct runs/distiller/sft/final "
    "runs/distiller/grpo/final --test mixture/grpo_test.jsonl -o runs/eval\n\n"
    "    lmmixup eval distiller base=bundled:smollm2-135m-instruct grpo=runs/distiller/grpo/final "
    "--test mixture/grpo_test.jsonl -o runs/eval --limit 50 "
    "--set rewards.quality_library=quality-library\n\n"
    "    lmmixup eval distiller runs/distiller/grpo/final --test mixture/grpo_test.jsonl -o runs/eval "
    "--judge-backend openai --judge-base-url http://localhost:8000/v1 --judge my-judge "
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
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="YAML with this command's keys (or an `eval:` section)."
        ),
    ] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key: KEY=VALUE (repeatable)."),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N test records.")] = None,
    judge: Annotated[
        str | None, typer.Option(help="Judge model [bundled:smollm2-135m-instruct].")
    ] = None,
    judge_backend: Annotated[str | None, typer.Option(help="Judge backend: hf | openai.")] = None,
    judge_base_url: Annotated[
        str | None, typer.Option(help="openai judge backend: server URL.")
    ] = None,
    judge_mode: Annotated[
        str | None, typer.Option(help="logprob (hf judges) | generate [logprob].")
    ] = None,
    quality_library: Annotated[
        str | None, typer.Option(help="kNN-Bayes library for the quality reward.")
    ] = None,
) -> None:
    """Generate with each model on the test records (greedy, the distiller's prompt) and compare:
    format compliance, the reward components and their total, and judge ratings of the parsed
    pairs (raw 1-10 and compressed 0-5) per task type. Replies are cached: re-runs are cheap."""
    from lmmixup.cli import _overrides
    from lmmixup.commands.train import load_section
    from lmmixup.evaluation.distiller import EvalDistillerConfig, evaluate_distillers, unique_specs

    flags = {
        "limit": limit,
        "judge.model": judge,
        "judge.backend": judge_backend,
        "judge.base_url": judge_base_url,
        "judge_mode": judge_mode,
        "rewards.quality_library": quality_library,
    }
    cfg = load_section(EvalDistillerConfig, config, "eval", _overrides(sets, **flags))
    results = evaluate_distillers(unique_specs(models), test, output, cfg)
    for label, result in results["models"].items():
        judged = result["judge"]["all"]
        typer.echo(
            f"{label}: compliant {result['format']['compliant']}, reward total "
            f"{result['rewards']['total']}, judge overall {judged['overall']} "
            f"({judged['rated']}/{result['records']} judged)"
        )
    typer.echo(f"results: {output / 'results.md'} and {output / 'results.json'}")
