"""`lmmixup experiment`: the paper's comparison table, every arm a resumable stage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmmixup.cli.options import ForceStagesOpt, SetOpt

experiment_app = typer.Typer(rich_markup_mode="markdown")


@experiment_app.command(
    "experiment",
    epilog="Examples:\n\n    lmmixup experiment --run-dir runs/experiment\n\n"
    "    lmmixup experiment my_experiment.yaml -d runs/exp1 --set experiment.eval.limit=50\n\n"
    "    lmmixup experiment --set 'experiment.arms=[random, mixup-3:7]' --set select.budget=20\n\n"
    "The YAML holds the `lmmixup run` sections plus an `experiment:` section "
    "(`lmmixup config init` documents the run sections; see docs/GUIDE.md).",
)
def experiment(
    config: Annotated[
        Path | None,
        typer.Argument(help="Run + experiment config (YAML); none = the bundled miniature one."),
    ] = None,
    run_dir: Annotated[
        Path, typer.Option("--run-dir", "-d", help="Folder for every stage and arm.")
    ] = Path("runs/experiment"),
    sets: SetOpt = None,
    force: ForceStagesOpt = False,
) -> None:
    """Build every arm's training set at one budget, fine-tune the same base model on each,
    evaluate them all (and the untuned base) on the same tasks, and write the table.

    Finished arms are skipped on a re-run; an interrupted one resumes.
    """
    from lmmixup.cli.commands.run import print_warnings, run_warnings
    from lmmixup.io.outputs import run_dir_lock
    from lmmixup.workflows.experiment import (
        TABLE_DIR,
        load_experiment_config,
        markdown,
        run_experiment,
    )

    cfg, exp = load_experiment_config(config, sets or [])
    with run_dir_lock(run_dir):  # one writer for the whole experiment, not only each stage
        table = run_experiment(cfg, exp, run_dir, force=force)
    typer.echo(markdown(table))
    typer.echo(f"table -> {run_dir / TABLE_DIR / 'results.md'}")
    print_warnings(run_warnings(run_dir))  # the pipeline's, last so they are seen
