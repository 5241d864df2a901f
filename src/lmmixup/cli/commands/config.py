"""`lmmixup config ...`: write a commented default run config, and check one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

config_app = typer.Typer(help="Write and check configuration files.", no_args_is_help=True)


@config_app.command("init", epilog="Example:\n\n    lmmixup config init -o lmmixup.yaml")
def config_init(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the config.")
    ] = Path("lmmixup.yaml"),
    demo: Annotated[bool, typer.Option(help="Start from the bundled demo's sources.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
) -> None:
    """Write a complete, commented default config for `lmmixup run`."""
    from lmmixup.config import RunConfig, to_yaml, validate
    from lmmixup.errors import LmmixupError
    from lmmixup.workflows.pipeline import demo_config

    if output.exists() and not overwrite:
        raise LmmixupError(f"{output} exists; pass --overwrite to replace it")
    cfg = validate(RunConfig, demo_config()) if demo else RunConfig()
    output.write_text(
        "# lmmixup run configuration. Every key is explained above it.\n" + to_yaml(cfg)
    )
    typer.echo(f"wrote {output}")


@config_app.command(
    "check",
    epilog="Examples:\n\n    lmmixup config check lmmixup.yaml\n\n"
    "    lmmixup config check my_experiment.yaml",
)
def config_check(
    path: Annotated[Path, typer.Argument(help="A run config, or an experiment config.")],
) -> None:
    """Validate a run config; unknown keys, bad values and settings that cannot work (missing
    or empty sources, a backend that cannot run the chosen mode) are named, one line each.

    A file with an `experiment:` section is checked as `lmmixup experiment` reads it: its arms,
    its fine-tune and evaluation options, and the held-out rows its tasks need.
    """
    from lmmixup.config import load_yaml
    from lmmixup.workflows.pipeline import check_run_config

    if "experiment" in load_yaml(path):
        from lmmixup.workflows.experiment import check_config, load_experiment_config

        run_cfg, exp = load_experiment_config(path, [])
        check_config(run_cfg, exp)
        check_run_config(run_cfg, str(path))
        typer.echo(f"{path}: ok (run sections and experiment section)")
        return
    from lmmixup.workflows.pipeline import load_run_config

    load_run_config(path, [])
    typer.echo(f"{path}: ok")
