"""`lmmixup data ...`: read any supported input into pool records."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmmixup.cli.options import ConfigOpt, SetOpt, overrides

data_app = typer.Typer(help="Import and inspect data.", no_args_is_help=True)


@data_app.command(
    "import",
    epilog="Examples:\n\n    lmmixup data import my_pool.jsonl -o pool.jsonl\n\n"
    "    lmmixup data import sharegpt gsm8k -o pool.jsonl --sample 500 --seed 1\n\n"
    "    lmmixup data import alpaca.json tulu.parquet -o pool.jsonl --max-completion-chars 4000\n\n"
    "    lmmixup data import my_pool.jsonl -o pool.jsonl --holdout-fraction 0.05  # + pool.heldout.jsonl",
)
def data_import(
    sources: Annotated[
        list[str],
        typer.Argument(
            help="Files (JSONL, JSON, Parquet, CSV), saved HF datasets, or built-in sources: sharegpt, gsm8k."
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Pool records (JSONL).")],
    rejects: Annotated[
        Path | None, typer.Option(help="Rejected rows (default: OUTPUT with .rejects.jsonl).")
    ] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    reject_over_chars: Annotated[
        int | None, typer.Option(help="A text longer than this is a bad row [default 1,000,000].")
    ] = None,
    min_prompt_chars: Annotated[
        int | None, typer.Option(help="Drop pairs with a shorter prompt.")
    ] = None,
    max_prompt_chars: Annotated[
        int | None, typer.Option(help="Drop pairs with a longer prompt.")
    ] = None,
    min_completion_chars: Annotated[
        int | None, typer.Option(help="Drop pairs with a shorter completion.")
    ] = None,
    max_completion_chars: Annotated[
        int | None, typer.Option(help="Drop pairs with a longer completion.")
    ] = None,
    sample: Annotated[
        int | None, typer.Option(help="Keep a seeded random sample of N rows.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Keep at most the first N rows.")] = None,
    holdout_fraction: Annotated[
        float | None,
        typer.Option(help="Set aside this fraction of the rows as OUTPUT.heldout.jsonl."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for --sample and the hold-out.")] = None,
) -> None:
    """Read any supported input into pool records (id, prompt, completion, source, meta).

    The built-in `gsm8k` skips the rows the offline evaluation suite uses (lmmixup_gsm8k), so
    no training set can hold a test question.

    Accepted row formats: prompt/completion, Alpaca (instruction/input/output), ShareGPT
    (conversations with from/value), OpenAI/TULU messages (role/content), question/answer.
    Bad rows go to the rejects file with their file, line and reason; good rows are kept.
    """
    from lmmixup.config import ImportConfig, load_config
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
    )
    cfg = load_config(ImportConfig, config, overrides(sets, **flags))
    written = [output, rejects or rejects_beside(output)]
    written += [heldout_path(output)] if cfg.holdout_fraction else []
    with claim_outputs(sources, written, records=written):
        result = import_pool(sources, output, cfg, rejects)
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
    for reason, count in result.reject_reasons.most_common(5):
        typer.echo(f"  {count:,} x {reason}")
