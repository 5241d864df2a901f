"""`lmmixup data ...`: read any supported input into pool records."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmmixup.cli.options import (
    FormatOpt,
    SetOpt,
    keyed,
    load_section,
    overrides,
    section_config_opt,
)

data_app = typer.Typer(help="Import and inspect data.", no_args_is_help=True)
ImportConfigOpt = section_config_opt("import")


@data_app.command(
    "import",
    epilog="Examples:\n\n    lmmixup data import my_pool.jsonl -o pool.jsonl\n\n"
    "    lmmixup data import sharegpt gsm8k -o pool.jsonl --sample 500 --seed 1\n\n"
    "    lmmixup data import alpaca.json tulu.parquet -o pool.jsonl --max-completion-chars 4000\n\n"
    "    lmmixup data import my_pool.jsonl -o pool.jsonl --holdout-fraction 0.05  # + pool.heldout.jsonl\n\n"
    "    lmmixup data import tatsu-lab/alpaca -o pool.jsonl --limit 2000  # Hub dataset, streamed\n\n"
    "    lmmixup data import allenai/tulu-v2-sft-mixture:train -o pool.parquet --sample 5000\n\n"
    "    lmmixup data import OWNER/NAME:CONFIG:SPLIT -o pool  # a saved dataset folder",
)
def data_import(
    sources: Annotated[
        list[str],
        typer.Argument(
            help="Files (JSONL, JSON, Parquet, CSV, Arrow), saved HF datasets or folders of data "
            "files, Hub datasets (OWNER/NAME, OWNER/NAME:SPLIT, OWNER/NAME:CONFIG:SPLIT; split "
            "train when left out), or built-in sources: sharegpt, gsm8k."
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Pool records: NAME.jsonl, NAME.parquet, or a dataset folder."
        ),
    ],
    output_format: FormatOpt = None,
    rejects: Annotated[
        Path | None, typer.Option(help="Rejected rows (default: OUTPUT with .rejects.jsonl).")
    ] = None,
    config: ImportConfigOpt = None,
    sets: SetOpt = None,
    reject_over_chars: Annotated[
        int | None,
        typer.Option(
            help=keyed(
                "import.reject_over_chars",
                "A text longer than this is a bad row [default 1,000,000].",
            )
        ),
    ] = None,
    min_prompt_chars: Annotated[
        int | None,
        typer.Option(help=keyed("import.min_prompt_chars", "Drop pairs with a shorter prompt.")),
    ] = None,
    max_prompt_chars: Annotated[
        int | None,
        typer.Option(help=keyed("import.max_prompt_chars", "Drop pairs with a longer prompt.")),
    ] = None,
    min_completion_chars: Annotated[
        int | None,
        typer.Option(
            help=keyed("import.min_completion_chars", "Drop pairs with a shorter completion.")
        ),
    ] = None,
    max_completion_chars: Annotated[
        int | None,
        typer.Option(
            help=keyed("import.max_completion_chars", "Drop pairs with a longer completion.")
        ),
    ] = None,
    sample: Annotated[
        int | None,
        typer.Option(help=keyed("import.sample", "Keep a seeded random sample of N rows.")),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help=keyed("import.limit", "Keep at most the first N rows."))
    ] = None,
    holdout_fraction: Annotated[
        float | None,
        typer.Option(
            help=keyed(
                "import.holdout_fraction",
                "Set aside this fraction of the rows as OUTPUT.heldout.jsonl.",
            )
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help=keyed("import.seed", "Seed for --sample and the hold-out."))
    ] = None,
    streaming: Annotated[
        bool | None,
        typer.Option(
            "--streaming/--no-streaming",
            help=keyed(
                "import.streaming",
                "Read Hub datasets as they download (on by itself with --limit).",
            ),
        ),
    ] = None,
) -> None:
    """Read any supported input into pool records (id, prompt, completion, source, meta).

    The built-in `gsm8k` skips the rows the offline evaluation suite uses (lmmixup_gsm8k), so
    no training set can hold a test question.

    Accepted row formats: prompt/completion, Alpaca (instruction/input/output), ShareGPT
    (conversations with from/value), OpenAI/TULU messages (role/content), question/answer.
    Bad rows go to the rejects file with their file, line and reason; good rows are kept.
    The rejects file is JSONL whatever the pool's format.

    Hub datasets load through `datasets` (HF_TOKEN for private ones); without a network,
    save the dataset with `save_to_disk` where there is one and pass the folder.
    """
    from lmmixup.config import ImportConfig
    from lmmixup.io.formats import RecordOutput
    from lmmixup.io.outputs import claim_outputs
    from lmmixup.runtime.runner import rejects_beside
    from lmmixup.stages.import_pool import heldout_path, import_pool

    flags = dict(
        reject_over_chars=reject_over_chars,
        min_prompt_chars=min_prompt_chars,
        max_prompt_chars=max_prompt_chars,
        min_completion_chars=min_completion_chars,
        max_completion_chars=max_completion_chars,
        sample=sample,
        limit=limit,
        holdout_fraction=holdout_fraction,
        seed=seed,
        streaming=streaming,
    )
    cfg = load_section(ImportConfig, config, "import", overrides(sets, **flags))
    out = RecordOutput.of(output, output_format)
    rejects = rejects or rejects_beside(output)
    written = [output, rejects, *([heldout_path(out)] if cfg.holdout_fraction else [])]
    with claim_outputs(sources, written, records=[rejects]):
        result = import_pool(sources, out, cfg, rejects)
    typer.echo(f"kept {result.kept:,} rows -> {result.output}")
    typer.echo(f"rejected {result.rejected:,} rows -> {result.rejects}")
    if result.heldout:
        typer.echo(f"held out {result.held_out:,} rows -> {result.heldout}")
    if result.filtered or result.dropped_by_limit:
        typer.echo(
            f"filtered by length {result.filtered:,}; left out by sample/limit {result.dropped_by_limit:,}"
        )
    if result.reserved_for_eval:
        typer.echo(f"skipped {result.reserved_for_eval:,} rows the evaluation suite uses")
    for name in result.stopped_at_limit:
        typer.echo(f"stopped reading {name} at the limit ({cfg.limit:,} rows kept)")
    for name, license_name in result.licenses.items():
        typer.echo(f"{name}: licence {license_name} (from its dataset card)")
    for reason, count in result.reject_reasons.most_common(5):
        typer.echo(f"  {count:,} x {reason}")
