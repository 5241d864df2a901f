"""`lmmixup plan`: what a run will ask of its models, and how long that takes, before it starts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmmixup.cli.options import SetOpt

plan_app = typer.Typer(rich_markup_mode="markdown")

TokensOpt = Annotated[
    float | None,
    typer.Option(
        "--tokens-per-second", help="Generated tokens/s the servers or GPUs give (all requests)."
    ),
]
PrefillOpt = Annotated[
    float | None,
    typer.Option(
        "--prompt-tokens-per-second", help="Prompt tokens/s read (prefill); counted when given."
    ),
]
RequestsOpt = Annotated[
    float | None,
    typer.Option("--requests-per-second", help="Completed requests/s (instead of tokens/s)."),
]
FromRunOpt = Annotated[
    Path | None,
    typer.Option("--from-run", help="A run directory whose stages' measured throughput to use."),
]
LowShareOpt = Annotated[
    float,
    typer.Option(
        "--low-share",
        min=0,
        max=1,
        help="Share of rated rows assumed low quality (unless split.high_fraction fixes it).",
    ),
]


@plan_app.command(
    epilog="Examples:\n\n    lmmixup plan my.yaml --tokens-per-second 2500\n\n"
    "    lmmixup plan my.yaml --from-run runs/pilot --run-dir runs/big"
)
def plan(
    config: Annotated[
        Path | None, typer.Argument(help="Run config (YAML); none = the bundled demo.")
    ] = None,
    sets: SetOpt = None,
    tokens_per_second: TokensOpt = None,
    prompt_tokens_per_second: PrefillOpt = None,
    requests_per_second: RequestsOpt = None,
    from_run: FromRunOpt = None,
    low_share: LowShareOpt = 0.5,
    pool: Annotated[
        Path | None,
        typer.Option(
            "--pool", help="An imported pool file to plan for, instead of import.sources."
        ),
    ] = None,
    run_dir: Annotated[
        Path | None,
        typer.Option(
            "--run-dir", "-d", help="Save the plan there: `lmmixup run` compares against it."
        ),
    ] = None,
) -> None:
    """Per stage: judge and distiller calls, prompt and completion tokens, time. Loads no model."""
    from lmmixup.workflows.pipeline import load_run_config

    cfg = load_run_config(config, sets or [])
    speeds = _throughput(tokens_per_second, prompt_tokens_per_second, requests_per_second)
    show_plan(cfg, speeds, from_run, low_share, run_dir, pool)


def _throughput(tokens: float | None, prefill: float | None, requests: float | None) -> dict:
    from lmmixup.workflows.plan import Throughput

    if not (tokens or requests):
        return {}
    speed = Throughput(tokens, prefill, requests)
    return dict.fromkeys(("rate", "distill", "rerate"), speed)


def show_plan(
    cfg,
    speeds: dict,
    from_run: Path | None,
    low_share: float,
    run_dir: Path | None,
    pool: Path | None = None,
) -> None:
    """Compute, print and (with `run_dir`) save the plan of `cfg` (over `pool` when given)."""
    from lmmixup.workflows.plan import (
        measured_throughput,
        plan_run,
        pool_file_scan,
        scan_pool,
        write_plan,
    )

    if from_run is not None:
        speeds = {**measured_throughput(from_run), **speeds}
    scan = pool_file_scan(pool) if pool is not None else scan_pool(cfg.import_)
    result = plan_run(cfg, scan, speeds, low_share=low_share)
    print_plan(result.as_dict())
    if run_dir is not None:
        typer.echo(f"plan saved: {write_plan(run_dir, result)}")


def _count(value: int, cap: int | None = None) -> str:
    return f"{value:,}" + (f" (≤{cap:,})" if cap and cap != value else "")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _time(seconds: float | None, most: float | None) -> str:
    if seconds is None:
        return "-"
    longer = most is not None and most > seconds * 1.01
    return _duration(seconds) + (f" (≤{_duration(most)})" if longer else "")


def print_plan(plan: dict) -> None:
    """The plan as a table, then its assumptions and how tokens were counted."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lmmixup plan: {plan['pool_rows']:,} pool rows")
    for column in (
        "stage",
        "model calls",
        "prompt tokens",
        "completion tokens",
        "tokens by",
        "embedded",
        "time",
    ):
        table.add_column(column)
    for s in plan["stages"]:
        table.add_row(
            s["stage"],
            _count(s["calls"], s["calls_max"]) if s["calls"] else "-",
            f"{s['prompt_tokens']:,}" if s["calls"] else "-",
            _count(s["completion_tokens"], s["completion_tokens_max"]) if s["calls"] else "-",
            s["tokens_counted"] if s["calls"] else "-",
            f"{s['embedded_texts']:,}" if s["embedded_texts"] else "-",
            _time(s["seconds"], s["seconds_max"]),
        )
    console = Console()
    console.print(table)
    for s in plan["stages"]:
        if s["notes"]:
            console.print(f"{s['stage']}: {'; '.join(s['notes'])}")
    console.print(
        "completion tokens: typical replies (≤ every reply at its cap); calls ≤ with retries"
    )
    for note in plan["assumptions"]:
        console.print(f"assumed: {note}")
    if not plan["throughput"]:
        console.print(
            "time: give --tokens-per-second or --requests-per-second, or --from-run a pilot run"
        )
    for stage, speed in plan["throughput"].items():
        console.print(f"throughput {stage}: {_speed(speed)}")


def _speed(speed: dict) -> str:
    parts = [
        f"{speed[key]:,.1f} {unit}"
        for key, unit in (
            ("requests_per_s", "requests/s"),
            ("tokens_per_s", "generated tokens/s"),
            ("prompt_tokens_per_s", "prompt tokens/s"),
        )
        if speed.get(key)
    ]
    return ", ".join(parts) + f" ({speed['source']})"


def print_against_plan(rows: list[dict], console) -> None:
    """A run's model use against its plan (summary.json's `plan`)."""
    from rich.table import Table

    if not rows:
        return
    table = Table(title="planned vs actual")
    for column in ("stage", "calls", "prompt tokens", "completion tokens", "planned tokens by"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["stage"],
            f"{_value(row['actual_calls'])} of {row['planned_calls']:,}",
            f"{_value(row['actual_prompt_tokens'])} of {row['planned_prompt_tokens']:,}",
            f"{_value(row['actual_completion_tokens'])} of "
            f"{row['planned_completion_tokens']:,} (≤{row['planned_completion_tokens_max']:,})",
            row["tokens_counted"],
        )
    console.print(table)


def _value(value: int | None) -> str:
    return "not recorded" if value is None else f"{value:,}"
