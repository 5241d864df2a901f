"""`lmmixup run`: the whole pipeline into one run directory, and its summary table."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from lmmixup.cli.options import ForceStagesOpt, SetOpt

run_app = typer.Typer(rich_markup_mode="markdown")


class ExecutorKind(StrEnum):
    local = "local"
    ray = "ray"


@run_app.command(
    epilog="Examples:\n\n    lmmixup run                      # the bundled demo, into runs/demo\n\n"
    "    lmmixup run my.yaml --run-dir runs/exp1\n\n"
    "    lmmixup run my.yaml --run-dir runs/exp1 --set select.budget=2000 --force\n\n"
    "    lmmixup run my.yaml --run-dir runs/exp1 --executor ray --ray-address 10.0.0.5:6379"
)
def run(
    config: Annotated[
        Path | None, typer.Argument(help="Run config (YAML); none = the bundled demo.")
    ] = None,
    run_dir: Annotated[
        Path,
        typer.Option("--run-dir", "-d", help="Folder for every stage's outputs and manifests."),
    ] = Path("runs/demo"),
    sets: SetOpt = None,
    force: ForceStagesOpt = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the plan (model calls, tokens; `lmmixup plan` takes throughputs), "
            "save it in the run directory, and stop.",
        ),
    ] = False,
    executor: Annotated[
        ExecutorKind | None,
        typer.Option(
            "--executor",
            help="Where per-record stages run: local (this process) or ray (a Ray cluster's "
            "actor pools); default: the config's executor.kind.",
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="The Ray cluster's address as `ray start --head` prints it (implies "
            "--executor ray); default: the config's executor.address.",
        ),
    ] = None,
) -> None:
    """Run the whole pipeline; finished stages are skipped, interrupted ones resume."""
    from lmmixup.workflows.pipeline import load_run_config, run_pipeline

    cfg = load_run_config(config, sets or [])
    if ray_address is not None:
        cfg.executor.kind, cfg.executor.address = "ray", ray_address
    if executor is not None:
        cfg.executor.kind = executor.value
    if dry_run:
        from lmmixup.cli.commands.plan import show_plan

        show_plan(cfg, {}, None, 0.5, run_dir)
        return
    summary = run_pipeline(cfg, run_dir, force=force)
    _print_summary(summary)


_HEADLINES = {
    "import": lambda c: f"{c.get('kept', 0):,} kept, {c.get('rejected', 0):,} rejected",
    "rate": lambda c: f"{c.get('rated', 0):,} rated, {c.get('failed', 0):,} failed",
    "split": lambda c: f"{c.get('high', 0):,} high, {c.get('low', 0):,} low",
    "cluster": lambda c: (
        f"{c.get('clusters', 0):,} clusters of {c.get('records', 0):,}" + _below_min_size(c)
    ),
    "distill": lambda c: (
        f"{c.get('distilled', 0):,} distilled, {sum(c.get('reject_reasons', {}).values()):,} rejected"
    ),
    "rerate": lambda c: f"{c.get('filter', {}).get('kept', 0):,} kept of {c.get('rated', 0):,}",
    "select": lambda c: f"{c.get('rows', 0):,} rows {c.get('by_origin', {})}",
}


def _below_min_size(counts: dict) -> str:
    """The cluster stage's note on clusters smaller than min_size, when there are any."""
    small = counts.get("below_min_size", {}).get("clusters", 0)
    return f" ({small:,} below min_size)" if small else ""


def _print_summary(summary: dict) -> None:
    """The run's table (records and time per stage) and where everything is."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lmmixup run: {summary['run_dir']}")
    for column in ("stage", "status", "records", "seconds"):
        table.add_column(column)
    for name, stage in summary["stages"].items():
        status = "skipped (done)" if stage["skipped"] else stage["status"]
        headline = _HEADLINES.get(name, lambda c: "")(stage["counts"])
        table.add_row(name, status, headline, f"{stage['seconds'] or 0:.1f}")
    console = Console()
    console.print(table)
    from lmmixup.cli.commands.plan import print_against_plan

    print_against_plan(summary.get("plan", {}).get("against", []), console)
    outputs = summary["outputs"]
    if "select.train" in outputs:
        console.print(
            f"training set: {outputs['select.train']} (why each row: {outputs['select.why']})"
        )
    rejects = [path for key, path in outputs.items() if key.endswith(".rejects")]
    console.print("rejects: " + ", ".join(rejects))
    console.print(f"manifests: {summary['run_dir']}/<stage>/manifest.json")
    console.print(f"every output: {Path(summary['run_dir']) / 'summary.json'}")
    console.print(f"report: {summary['report']}")
    print_warnings(summary.get("warnings", []), console)


def run_warnings(run_dir: Path) -> list[dict]:
    """The warnings `lmmixup run` wrote to RUN_DIR/summary.json (none when it has none)."""
    import json

    try:
        found = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))["warnings"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    keys = ("code", "message", "advice")
    if not isinstance(found, list):
        return []
    return [
        w for w in found if isinstance(w, dict) and all(isinstance(w.get(k), str) for k in keys)
    ]


def print_warnings(warnings: list[dict], console=None) -> None:
    """The run's warnings (summary.json's `warnings`), last on the console so they are seen;
    printed with -q too: they are the honest part of the result."""
    if not warnings:
        return
    from rich.console import Console

    console = console or Console()
    count = f"{len(warnings)} warning{'s' if len(warnings) > 1 else ''}"
    console.rule(f"{count} (also in summary.json and at the top of the report)", style="yellow")
    for warning in warnings:
        console.print(
            f"warning [{warning['code']}]: {warning['message']}",
            style="bold yellow",
            markup=False,
            highlight=False,
            soft_wrap=True,  # one line each, whatever the width: easy to find and grep
        )
        console.print(
            f"  what to do: {warning['advice']}", markup=False, highlight=False, soft_wrap=True
        )
