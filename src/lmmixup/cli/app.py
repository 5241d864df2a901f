"""The `lmmixup` command line: thin commands over the library. Heavy imports stay inside them.

This module holds the typer app, the global options and `main()`, which maps errors to exit
codes; the commands live in lmmixup.cli.commands.
"""

from __future__ import annotations

import errno
import logging
import sys
from typing import Annotated

import typer

from lmmixup.cli.commands.config import config_app
from lmmixup.cli.commands.data import data_app
from lmmixup.cli.commands.evaluate import eval_app
from lmmixup.cli.commands.experiment import experiment_app
from lmmixup.cli.commands.export import export_app
from lmmixup.cli.commands.finetune import finetune_app
from lmmixup.cli.commands.mixture import mixture_app
from lmmixup.cli.commands.plan import plan_app
from lmmixup.cli.commands.report import report_app
from lmmixup.cli.commands.rewards import rewards_app
from lmmixup.cli.commands.run import run_app
from lmmixup.cli.commands.stages import stages_app
from lmmixup.cli.commands.train import train_app

app = typer.Typer(
    help="Instruction distillation with LM-Mixup: rate a pool, cluster its low-quality part, "
    "distill each cluster into one pair, and select a compact training set.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
# top-level commands, in the order `lmmixup --help` lists them, then the command groups
for commands in (
    finetune_app,
    experiment_app,
    report_app,
    export_app,
    stages_app,
    plan_app,
    run_app,
):
    app.registered_commands += commands.registered_commands
for group_name, group in (
    ("data", data_app),
    ("config", config_app),
    ("mixture", mixture_app),
    ("rewards", rewards_app),
    ("train", train_app),
    ("eval", eval_app),
):
    app.add_typer(group, name=group_name)

QUIET_LOGGERS = (
    "sentence_transformers",
    "faiss",
    "transformers",
    "huggingface_hub",
    "lmmixup.http",  # one INFO line per request to a server
    "httpx",  # huggingface_hub's HTTP library, one INFO line per request;
    "httpx2",  # its name depends on the version
    "httpcore",
    "httpcore2",
)
"""Libraries whose logs show only warnings and errors unless --verbose."""
_state = {"verbose": False}


def _show_version(value: bool) -> None:
    """--version: the installed package's version (importlib.metadata), then exit."""
    if value:
        from importlib.metadata import version

        typer.echo(f"lmmixup {version('lmmixup')}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_show_version,
            is_eager=True,
            help="Show the installed version and exit.",
        ),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug logging and full tracebacks.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars; warnings and errors only.")
    ] = False,
) -> None:
    from lmmixup import progress

    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # libraries' own chatter (model loading, faiss builds, a line per request) only with -v
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
    progress.set_enabled(not quiet)
    _state["verbose"] = verbose


INTERRUPTED = 130


def _os_error_message(exc: OSError) -> str:
    """An OS error as one line naming the file (disk full, permission denied, missing file)."""
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on device writing{where or ' a file'}; free space and re-run"
    return f"{exc.filename or 'a file'}: {exc.strerror or exc}"


def _exit(message: str, code: int) -> None:
    typer.echo(message, err=True)
    sys.exit(code)


def main() -> None:
    """Entry point: errors become one line on stderr and exit 2 (DESIGN.md, docs/GUIDE.md);
    Ctrl-C exits 130. `-v` shows the traceback of an unexpected error instead."""
    from lmmixup.errors import LmmixupError

    try:
        from lmmixup.cli.options import renamed_flags

        args = renamed_flags(sys.argv[1:])
        code = app(args=args, standalone_mode=False)  # returns an exit code instead of exiting
    except LmmixupError as exc:
        _exit(f"error: {exc}", 2)
    except KeyboardInterrupt:
        code = INTERRUPTED
    except typer.Abort:
        sys.exit(1)
    except typer.TyperException as exc:  # usage errors: bad option, missing argument
        exc.show()
        sys.exit(exc.exit_code)
    except OSError as exc:
        if _state["verbose"]:
            raise
        _exit(f"error: {_os_error_message(exc)}", 2)
    except Exception as exc:
        if _state["verbose"]:
            raise
        _exit(
            f"internal error: {str(exc) or 'no message'}; run with -v for the traceback, "
            "and please report it",
            2,
        )
    if code == INTERRUPTED:  # typer turns Ctrl-C inside a command into exit code 130
        _exit("interrupted; re-run to continue", INTERRUPTED)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
