"""`lmmixup export`: a finished run's training set as JSONL, Parquet or a Hugging Face dataset
with its card, optionally uploaded to the Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmmixup.cli.options import FormatOpt, MessagesOpt

export_app = typer.Typer(rich_markup_mode="markdown")


@export_app.command(
    epilog="Examples:\n\n    lmmixup export runs/exp1 -o exports/exp1            # dataset folder + README.md card\n\n"
    "    lmmixup export runs/exp1 -o train.parquet --messages  # TRL's conversational format\n\n"
    "    HF_TOKEN=hf_... lmmixup export runs/exp1 -o exports/exp1 --push-to-hub me/exp1-sft"
)
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory whose select stage finished.")],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="NAME.jsonl, NAME.parquet, or a folder: a saved HF dataset with its card "
            "(README.md).",
        ),
    ],
    output_format: FormatOpt = None,
    messages: MessagesOpt = False,
    license: Annotated[
        str | None,
        typer.Option(help="The card's `license` (e.g. apache-2.0); left out when not given."),
    ] = None,
    language: Annotated[
        list[str] | None,
        typer.Option(help="The card's `language` (e.g. en; repeatable); left out when not given."),
    ] = None,
    push_to_hub: Annotated[
        str | None,
        typer.Option(
            help="Upload the dataset folder to this Hub dataset repo (OWNER/NAME); token from "
            "HF_TOKEN."
        ),
    ] = None,
    private: Annotated[
        bool, typer.Option(help="With --push-to-hub: create the repo private.")
    ] = False,
) -> None:
    """Write the run's training set with its provenance (id, source, origin, member_ids): a
    file, or a folder holding a saved HF dataset (`datasets.load_from_disk`) and a dataset
    card: the method, counts per stage, sources and licences, lineage, warnings, config."""
    from lmmixup.errors import LmmixupError
    from lmmixup.io.formats import RecordOutput
    from lmmixup.workflows.export import export_run
    from lmmixup.workflows.export import push_to_hub as push

    out = RecordOutput.of(output, output_format, messages)
    if push_to_hub and out.fmt != "hf":
        raise LmmixupError(
            f"--push-to-hub uploads a dataset folder with its card; give -o a folder name, not {output}"
        )
    result = export_run(run_dir, out, license=license, languages=language)
    shape = "messages" if messages else "prompt/completion"
    typer.echo(f"exported {result.rows:,} rows ({shape}, {out.fmt}) -> {output}")
    if result.card:
        typer.echo(f"dataset card -> {result.card}")
    if push_to_hub:
        url = push(output, push_to_hub, private=private)
        typer.echo(f"uploaded to the Hub dataset {push_to_hub}: {url}")
