"""`lmmixup config ...`: write a commented default run config, and check one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

config_app = typer.Typer(help="Write and check configuration files.", no_args_is_help=True)


@config_app.command(
    "init",
    epilog="Examples:\n\n    lmmixup config init -o lmmixup.yaml          # the method's defaults\n\n"
    "    lmmixup config init -o demo.yaml --demo      # the bundled demo's settings",
)
def config_init(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the config.")
    ] = Path("lmmixup.yaml"),
    demo: Annotated[
        bool,
        typer.Option(
            help="Write the bundled demo's settings (sized for its 135M models: short texts, "
            "small clusters) instead of the method's defaults."
        ),
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
) -> None:
    """Write a complete, commented config for `lmmixup run`: every key with the method's
    default (or the demo's value with --demo) and what it does."""
    from lmmixup.config import RunConfig, to_yaml, validate
    from lmmixup.errors import LmmixupError
    from lmmixup.workflows.pipeline import demo_config

    if output.exists() and not overwrite:
        raise LmmixupError(f"{output} exists; pass --overwrite to replace it")
    cfg = validate(RunConfig, demo_config()) if demo else RunConfig()
    what = "the bundled demo's settings" if demo else "the method's defaults"
    output.write_text(
        f"# lmmixup run configuration: {what}. Every key is explained above it.\n" + to_yaml(cfg)
    )
    typer.echo(f"wrote {output} ({what})")
    if not cfg.import_.sources:
        typer.echo(
            f"next: list your data under import.sources, then `lmmixup config check {output}`"
        )


@config_app.command(
    "check",
    epilog="Examples:\n\n    lmmixup config check lmmixup.yaml\n\n"
    "    lmmixup config check my_experiment.yaml",
)
def config_check(
    path: Annotated[Path, typer.Argument(help="A run config, or an experiment config.")],
) -> None:
    """Check a run config's types and meaning, one line per problem naming its key and what
    to do: unknown keys and bad values; sources that are missing or empty; a model its backend
    cannot serve; filters that drop every row; a budget the pool cannot fill (from sample sizes
    and row counts); cluster sizes that contradict each other. Exit 2 when there are errors;
    warnings alone exit 0.

    A file with an `experiment:` section is checked as `lmmixup experiment` reads it: its arms,
    its fine-tune and evaluation options, and the held-out rows its tasks need.
    """
    from lmmixup.config import RunConfig, load_yaml, validate
    from lmmixup.workflows.config_check import check_meaning

    if "experiment" in load_yaml(path):
        from lmmixup.workflows.experiment import check_config, load_experiment_config

        cfg, exp = load_experiment_config(path, [])
        check_config(cfg, exp)
        what = "run sections and experiment section"
    else:
        cfg = validate(RunConfig, load_yaml(path), str(path))
        what = ""
    findings = check_meaning(cfg)
    for finding in findings:
        typer.echo(finding.line(str(path)), err=True)
    errors = sum(finding.level == "error" for finding in findings)
    if errors:
        typer.echo(f"{path}: {errors} error(s); fix them before `lmmixup run`", err=True)
        raise typer.Exit(2)
    warned = f"{len(findings)} warning(s)" if findings else ""
    detail = ", ".join(part for part in (what, warned) if part)
    typer.echo(f"{path}: ok" + (f" ({detail})" if detail else ""))
