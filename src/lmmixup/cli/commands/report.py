"""`lmmixup report RUN_DIR -o report.html`: one self-contained HTML page about a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

report_app = typer.Typer(rich_markup_mode="markdown")


@report_app.command(
    "report",
    epilog="Examples:\n\n    lmmixup report runs/demo -o report.html\n\n"
    "    lmmixup report runs/exp1            # writes runs/exp1/report.html\n\n"
    "    lmmixup report my_outputs/          # the files of `lmmixup rate/split/cluster/"
    "distill/select -o`",
)
def report(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="A run directory from `lmmixup run` (complete or interrupted), or a folder of "
            "the standalone stage commands' outputs."
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="The HTML file [RUN_DIR/report.html]."),
    ] = None,
) -> None:
    """Write one HTML file about a run: its quality warnings first, the models used, records
    and time per stage, score histograms, cluster sizes and cohesion, clusters before and
    after distillation (each with its outcome), rejects by reason (in full), the training
    set's composition and a sample of its rows, training curves, the experiment table when
    present, and links to every file.

    The file needs nothing else to open (plots are inline SVG, no network; the file links are
    relative to it). Sections whose files are missing say so, so an interrupted run still gets
    a report. In a folder of stage outputs the files are found by their manifests
    (`NAME.manifest.json`) and else by the shape of their records (docs/GUIDE.md, 1.8).
    """
    from lmmixup.report import write_report

    typer.echo(f"report -> {write_report(run_dir, output)}")
