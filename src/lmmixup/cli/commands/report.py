"""`lmmixup report RUN_DIR -o report.html`: one self-contained HTML page about a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

report_app = typer.Typer(rich_markup_mode="markdown")


@report_app.command(
    "report",
    epilog="Examples:\n\n    lmmixup report runs/demo -o report.html\n\n"
    "    lmmixup report runs/exp1            # writes runs/exp1/report.html",
)
def report(
    run_dir: Annotated[
        Path, typer.Argument(help="A run directory from `lmmixup run`, complete or interrupted.")
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="The HTML file [RUN_DIR/report.html]."),
    ] = None,
) -> None:
    """Write one HTML file about a run: records and time per stage, score histograms, cluster
    sizes and cohesion, clusters before and after distillation, rejects by reason, the
    training set's composition, training curves and the experiment table when present.

    The file needs nothing else to open (plots are inline SVG, no network). Sections whose
    files are missing say so, so an interrupted run still gets a report.
    """
    from lmmixup.report import write_report

    typer.echo(f"report -> {write_report(run_dir, output)}")
