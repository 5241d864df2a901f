"""`lmmixup rewards ...`: what the GRPO rewards need, built from rated data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmmixup.cli.options import EmbedderOpt

rewards_app = typer.Typer(
    help="Build what the GRPO rewards need (the quality reward's kNN-Bayes library).",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)


@rewards_app.callback()
def rewards_group() -> None:
    """Build what the GRPO rewards need (the quality reward's kNN-Bayes library)."""


@rewards_app.command(
    "build-library",
    epilog="Examples:\n\n    lmmixup rewards build-library rated.jsonl -o quality-library\n\n"
    "    lmmixup rewards build-library rated_a.jsonl rated_b.jsonl -o lib --min-task-samples 50\n\n"
    "    lmmixup rewards build-library rated.jsonl -o lib --no-by-task --k-transition 2 "
    "--embedder sentence-transformers/all-mpnet-base-v2\n\n"
    "Then point `rewards.quality_library` of `lmmixup train grpo` / `lmmixup eval distiller` at it "
    "(the plain `lmmixup.rewards.quality_reward` callable reads $LMMIXUP_QUALITY_LIBRARY).",
)
def build_library_command(
    rated: Annotated[
        list[Path], typer.Argument(help="Rated records (JSONL with rating.score, task_type).")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Library folder to write.")],
    embedder: EmbedderOpt = None,
    by_task: Annotated[
        bool, typer.Option("--by-task/--no-by-task", help="Also fit one scorer per task type.")
    ] = True,
    min_task_samples: Annotated[
        int, typer.Option(min=2, help="A task type with fewer samples is left to 'default'.")
    ] = 20,
    k_transition: Annotated[
        int, typer.Option(min=1, help="Neighbours used to estimate the transition matrix.")
    ] = 3,
    overwrite: Annotated[bool, typer.Option(help="Replace a library already in OUTPUT.")] = False,
) -> None:
    """Fit the quality reward's kNN-Bayes scorers: "default" on all rated records, plus one per
    task type with enough samples. Records whose rating failed (`rating: null`) are skipped."""
    from lmmixup.backends.embed import load_embedder
    from lmmixup.config import DEFAULT_EMBEDDER
    from lmmixup.rewards.library import build_library, class_counts, read_rated, save_library

    name = embedder or DEFAULT_EMBEDDER
    records, unrated = read_rated(rated)
    library = build_library(
        records,
        load_embedder(name),
        embedder_name=name,
        by_task=by_task,
        min_task_samples=min_task_samples,
        k_transition=k_transition,
    )
    save_library(library, output, overwrite)
    typer.echo(f"{len(records):,} rated records -> {output} ({unrated:,} without a rating skipped)")
    for task, scorer in library.scorers.items():
        counts = ", ".join(f"{score}: {n:,}" for score, n in class_counts(scorer).items())
        typer.echo(f"  {task}: {len(scorer.labels):,} samples; per score {counts}")
