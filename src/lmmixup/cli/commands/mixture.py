"""`lmmixup mixture ...`: MIXTURE-style training data for the distiller (SPEC stage 6)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from lmmixup.cli.options import (
    SetOpt,
    backend_opt,
    base_url_opt,
    in_section,
    keyed,
    load_section,
    model_opt,
    overrides,
    section_config_opt,
)

mixture_app = typer.Typer(
    help="Build the distiller's training data: clusters of degraded variants -> one target.",
    no_args_is_help=True,
)


DegraderBackendOpt = backend_opt(
    "Model that writes degraded variants too", "mixture.degrader.backend"
)
DegraderModelOpt = model_opt("That model", "mixture.degrader.model")
DegraderBaseUrlOpt = base_url_opt("mixture.degrader.base_url")
MixtureConfigOpt = section_config_opt("mixture")


@mixture_app.callback()
def mixture_group() -> None:
    """Build the distiller's training data: clusters of degraded variants -> one target."""


@mixture_app.command(
    "build",
    epilog="Examples:\n\n    lmmixup mixture build -o mixture/      # bundled gsm8k + sharegpt\n\n"
    "    lmmixup mixture build high.jsonl gsm8k -o mixture/ --max-examples 2000 --seed 1\n\n"
    "    lmmixup mixture build -o mixture/ --no-embed --set cross_topic_fraction=0.2 "
    "--set task_weights.paragraph=2\n\n"
    "    lmmixup mixture build -o mixture/ --backend openai --base-url http://localhost:8000/v1 "
    "--model Qwen/Qwen2.5-7B-Instruct --llm-fraction 0.3",
)
def build(
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Folder for sft/grpo_train/grpo_test.jsonl and card."),
    ],
    seeds: Annotated[
        list[str] | None,
        typer.Argument(
            help="High-quality seed samples: pool files or built-in sources (gsm8k, sharegpt) [gsm8k sharegpt]."
        ),
    ] = None,
    config: MixtureConfigOpt = None,
    sets: SetOpt = None,
    max_examples: Annotated[
        int | None,
        typer.Option(help=keyed("mixture.max_examples", "Build at most this many records.")),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help=keyed("mixture.seed", "Seed for every random choice [0]."))
    ] = None,
    no_embed: Annotated[
        bool,
        typer.Option(
            "--no-embed",
            help=keyed(
                "mixture.embedder",
                "Find similar seeds by shared words instead of a sentence embedder "
                "(embedder: lexical).",
            ),
        ),
    ] = False,
    backend: DegraderBackendOpt = None,
    model: DegraderModelOpt = None,
    base_url: DegraderBaseUrlOpt = None,
    llm_fraction: Annotated[
        float | None,
        typer.Option(
            help=keyed("mixture.llm_fraction", "Share of the variants the model writes [0.5].")
        ),
    ] = None,
) -> None:
    """Degrade high-quality seeds into clusters of low-quality variants, each paired with its
    target in one of the task layouts (qa, mcq, tfq, cs, paragraph); write the SFT and GRPO
    splits and a card with the counts.

    Rule-based operators remove information (dropped sentences or steps, truncation, the bare
    final answer, vague wording) and add surface noise (typos, casing, whitespace, repeats).
    With --backend/--model a model writes a share of the variants; its failures are counted
    in the card and replaced by rule-based variants.
    """
    from lmmixup.io.outputs import check_outputs, run_dir_lock
    from lmmixup.mixture import LEXICAL, REJECTS_FILE, SPLITS, MixtureConfig, build_mixture

    degrader = in_section("degrader", backend=backend, model=model, base_url=base_url)
    flags = dict(
        seeds=seeds or None,
        max_examples=max_examples,
        seed=seed,
        llm_fraction=llm_fraction,
        embedder=LEXICAL if no_embed else None,
    )
    cfg = load_section(MixtureConfig, config, "mixture", overrides(sets, **degrader, **flags))
    written = [output / f"{split}.jsonl" for split in SPLITS]
    written += [output / "card.json", output / "card.md", output / REJECTS_FILE]
    check_outputs([spec.path for spec in cfg.seeds], written)
    started = time.perf_counter()
    with run_dir_lock(output):
        card = build_mixture(cfg, output)
    _report(card, output, time.perf_counter() - started)


def _report(card: dict, output: Path, seconds: float) -> None:
    """Print the record counts, the card's location and any model-degradation failures."""
    from lmmixup.mixture import REJECTS_FILE

    typer.echo(
        f"{card['records']:,} records ({card['cross_topic']:,} cross-topic) in {seconds:.1f} s "
        f"-> {output}"
    )
    for split, counts in card["by_split_and_task"].items():
        detail = ", ".join(f"{task} {n:,}" for task, n in counts.items())
        typer.echo(f"  {split}: {card['splits'][split]:,} ({detail})")
    llm = card["llm_degradations"]
    if llm is not None:
        typer.echo(
            f"model degradations: {llm['written']:,} of {llm['requested']:,} written; "
            f"{llm['fell_back_to_rules']:,} failed -> rule-based ({llm['failed'] or 'none'})"
        )
    rejected = card["seeds"]["rejected_rows"]
    if rejected:
        typer.echo(f"{rejected:,} seed rows could not be read -> {output / REJECTS_FILE}")
    typer.echo(f"card: {output / 'card.md'} and {output / 'card.json'}")
