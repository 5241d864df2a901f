"""`lmmixup finetune` and `lmmixup decontaminate`: train a target model on a selected set (SPEC
stage 9), after checking the set against the evaluation data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmmixup.cli.options import (
    FormatOpt,
    MessagesOpt,
    SetOpt,
    keyed,
    load_section,
    max_steps_opt,
    overrides,
    section_config_opt,
)
from lmmixup.errors import LmmixupError
from lmmixup.stages.decontaminate import DEFAULT_N, MIN_WORDS

finetune_app = typer.Typer(rich_markup_mode="markdown")

FinetuneConfigOpt = section_config_opt("finetune")
FinetuneMaxStepsOpt = max_steps_opt("finetune.max_steps")
AGAINST_HELP = "Evaluation data as NAME=FILE.jsonl (repeatable); text fields: question, prompt, answer, completion, text."


def named_files(specs: list[str] | None, option: str) -> dict[str, str]:
    """{name: file} from NAME=FILE arguments; a malformed or repeated name is an error."""
    files: dict[str, str] = {}
    for spec in specs or []:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise LmmixupError(f"{option} {spec!r}: expected NAME=FILE.jsonl")
        if name in files:
            raise LmmixupError(f"{option}: the name {name!r} is given twice")
        files[name] = path
    return files


@finetune_app.command(
    "finetune",
    epilog="Examples:\n\n    lmmixup finetune runs/demo/select/train.jsonl --model bundled:smollm2-135m-instruct "
    "-o runs/ft/mixup\n\n"
    "    lmmixup finetune train.jsonl --model meta-llama/Llama-3.1-8B -o runs/ft/x "
    "--decontaminate-against gsm8k=gsm8k_test.jsonl --max-steps 200\n\n"
    "    lmmixup finetune train.jsonl -c finetune.yaml --set epochs=1 --set lora.r=16",
)
def finetune(
    train: Annotated[
        str | None,
        typer.Argument(help="Training set: prompt/completion JSONL (e.g. from `lmmixup select`)."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help=keyed("finetune.model", "Model to tune: checkpoint path or bundled name.")
        ),
    ] = None,
    output_dir: Annotated[
        str | None,
        typer.Option(
            "--output-dir",
            "-o",
            help=keyed("finetune.output_dir", "Checkpoints, rejects, summary.json, OUTPUT/final."),
        ),
    ] = None,
    config: FinetuneConfigOpt = None,
    sets: SetOpt = None,
    max_steps: FinetuneMaxStepsOpt = None,
    against: Annotated[
        list[str] | None,
        typer.Option(
            "--decontaminate-against", help=keyed("finetune.decontaminate_against", AGAINST_HELP)
        ),
    ] = None,
) -> None:
    """LoRA fine-tune (rank 64, alpha 16, lr 1e-4, linear schedule, 3% warmup) of a model on a
    prompt/completion training set, each row rendered with the model's chat template and the loss
    on the completion only. Bad lines and contaminated rows go to OUTPUT/rejects.jsonl; the
    merged model is a plain HF checkpoint in OUTPUT/final. Re-running the same command resumes
    from the last checkpoint."""
    from lmmixup.training.finetune import FinetuneConfig
    from lmmixup.training.finetune import finetune as run_finetune

    flags = {"train": train, "model": model, "output_dir": output_dir, "max_steps": max_steps}
    flags["decontaminate_against"] = named_files(against, "--decontaminate-against") or None
    cfg = load_section(FinetuneConfig, config, "finetune", overrides(sets, **flags))
    summary = run_finetune(cfg)
    resumed = f" (resumed from {summary['resumed_from']})" if summary["resumed_from"] else ""
    typer.echo(
        f"step {summary['global_step']}{resumed}, loss {summary['loss']}; final model -> {summary['final']}"
    )
    typer.echo(
        f"trained on {summary['rows']:,} rows; left out {summary['too_long']:,} too long, "
        f"{summary['rejected']:,} bad lines, {summary['contaminated']:,} contaminated -> {summary['rejects']}"
    )


@finetune_app.command(
    "decontaminate",
    epilog="Examples:\n\n    lmmixup decontaminate train.jsonl --against gsm8k=gsm8k_test.jsonl -o clean.jsonl\n\n"
    "    lmmixup decontaminate train.jsonl --against gsm8k=gsm8k_test.jsonl "
    "--against heldout=heldout.jsonl -o clean.jsonl --n 8\n\n"
    "    lmmixup decontaminate train.parquet --against gsm8k=gsm8k_test.jsonl -o clean.parquet",
)
def decontaminate(
    train: Annotated[
        Path,
        typer.Argument(help="Training set: prompt/completion JSONL, Parquet or dataset folder."),
    ],
    against: Annotated[list[str], typer.Option(help=AGAINST_HELP)],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Kept rows: NAME.jsonl, NAME.parquet or a dataset folder; dropped ones go to "
            "NAME.rejects.jsonl.",
        ),
    ],
    output_format: FormatOpt = None,
    messages: MessagesOpt = False,
    n: Annotated[int, typer.Option(help="Words per n-gram.")] = DEFAULT_N,
    min_words: Annotated[
        int,
        typer.Option(help="Shorter evaluation texts with at least this many words match whole."),
    ] = MIN_WORDS,
) -> None:
    """Drop training rows that share a word n-gram (casing and punctuation ignored) with the
    evaluation data, and print how many rows overlap each task. Bad lines and dropped rows
    (with the tasks and the matched n-gram) go to OUTPUT.rejects.jsonl."""
    from lmmixup.io.formats import RecordOutput
    from lmmixup.io.jsonl import write_records
    from lmmixup.io.outputs import check_outputs
    from lmmixup.runtime.runner import rejects_beside
    from lmmixup.stages.decontaminate import decontaminate as split_rows
    from lmmixup.stages.decontaminate import read_eval_sets
    from lmmixup.training.finetune import read_training_set

    against_files = named_files(against, "--against")
    rejects = rejects_beside(output)
    out = RecordOutput.of(output, output_format, messages)
    check_outputs([train, *against_files.values()], [output, rejects])
    eval_sets = read_eval_sets(against_files)
    data = read_training_set(train)
    kept, dropped, report = split_rows(data.rows, eval_sets, n, min_words)
    out.write(kept)
    write_records(rejects, data.rejects + dropped)
    for line in report.lines():
        typer.echo(line)
    typer.echo(f"kept {len(kept):,} rows -> {output}")
    typer.echo(
        f"dropped {len(dropped):,} contaminated, {len(data.rejects):,} bad lines -> {rejects}"
    )
