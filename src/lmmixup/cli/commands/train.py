"""`lmmixup train ...`: train the distiller: cold-start SFT, then GRPO (SPEC stages 7-8), or
the whole recipe (data, quality library, SFT, GRPO, evaluation) as one resumable run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lmmixup.cli.options import (
    ForceStagesOpt,
    SetOpt,
    keyed,
    load_section,
    max_steps_opt,
    overrides,
    section_config_opt,
)

train_app = typer.Typer(
    help="Train the distiller: cold-start SFT on MIXTURE, then GRPO with the three rewards.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)


def _training_opts(section: str) -> tuple:
    """The flags `train sft` and `train grpo` share, each naming its key in `section`."""
    return (
        section_config_opt(section),
        Annotated[
            str | None,
            typer.Option(
                help=keyed(f"{section}.model", "Starting model: checkpoint path or bundled name.")
            ),
        ],
        Annotated[
            str | None,
            typer.Option(
                help=keyed(f"{section}.mixture", "MIXTURE folder from `lmmixup mixture build`.")
            ),
        ],
        Annotated[
            str | None,
            typer.Option(
                "--output-dir",
                "-o",
                help=keyed(f"{section}.output_dir", "Checkpoints, steps.jsonl and OUTPUT/final."),
            ),
        ],
        max_steps_opt(f"{section}.max_steps"),
    )


SftConfigOpt, SftModelOpt, SftMixtureOpt, SftOutputOpt, SftMaxStepsOpt = _training_opts("sft")
GrpoConfigOpt, GrpoModelOpt, GrpoMixtureOpt, GrpoOutputOpt, GrpoMaxStepsOpt = _training_opts("grpo")


@train_app.callback()
def train_group() -> None:
    """Train the distiller: cold-start SFT on MIXTURE, then GRPO with the three rewards."""


def _report(summary: dict[str, Any]) -> None:
    """Print where the run ended and how fast its steps were."""
    resumed = f" (resumed from {summary['resumed_from']})" if summary["resumed_from"] else ""
    typer.echo(f"step {summary['global_step']}{resumed}; final model -> {summary['final']}")
    per_step = summary["mean_step_seconds"]
    if per_step is not None:
        typer.echo(f"mean {per_step:.2f} s/step; {summary['seconds']:.1f} s this run")
    if summary["too_long"]:
        typer.echo(f"left out {summary['too_long']:,} records longer than the length limit")


@train_app.command(
    "sft",
    epilog="Examples:\n\n    lmmixup train sft --mixture mixture/ -o runs/distiller/sft\n\n"
    "    lmmixup train sft -c my_recipe.yaml --max-steps 40     # its `sft:` section\n\n"
    "    lmmixup train sft -c my.yaml --set lora.enabled=false --set learning_rate=2e-5",
)
def sft(
    config: SftConfigOpt = None,
    sets: SetOpt = None,
    model: SftModelOpt = None,
    mixture: SftMixtureOpt = None,
    output_dir: SftOutputOpt = None,
    max_steps: SftMaxStepsOpt = None,
) -> None:
    """Supervised cold start on MIXTURE `sft.jsonl`: the cluster prompt in, the target and EOS out
    (loss on the target only). LoRA by default, merged into OUTPUT/final, which
    `lmmixup distill --model OUTPUT/final` loads. Re-running the same command resumes from the
    last checkpoint. The YAML may hold the keys at its top level or under `sft:`."""
    from lmmixup.training.sft import SFTTrainConfig, train_sft

    flags = {"model": model, "mixture": mixture, "output_dir": output_dir, "max_steps": max_steps}
    cfg = load_section(SFTTrainConfig, config, "sft", overrides(sets, **flags))
    _report(train_sft(cfg))


@train_app.command(
    "grpo",
    epilog="Examples:\n\n    lmmixup train grpo --model runs/distiller/sft/final --mixture mixture/ "
    "--set rewards.quality_library=quality-library -o runs/distiller/grpo\n\n"
    "    lmmixup train grpo -c my_recipe.yaml --max-steps 20\n\n"
    "The whole recipe, data to evaluation, is `lmmixup train distiller`.",
)
def grpo(
    config: GrpoConfigOpt = None,
    sets: SetOpt = None,
    model: GrpoModelOpt = None,
    mixture: GrpoMixtureOpt = None,
    output_dir: GrpoOutputOpt = None,
    max_steps: GrpoMaxStepsOpt = None,
) -> None:
    """GRPO on MIXTURE `grpo_train.jsonl` with R = 0.5 quality + 0.4 alignment + 0.1 format
    (`rewards.quality_library` must name a library from `lmmixup rewards build-library`).
    Per-reward means and std, step time and reward time go to OUTPUT/steps.jsonl. Re-running
    the same command resumes from the last checkpoint. The YAML may hold the keys at its top
    level or under `grpo:`."""
    from lmmixup.training.grpo import GRPOTrainConfig, train_grpo

    flags = {"model": model, "mixture": mixture, "output_dir": output_dir, "max_steps": max_steps}
    cfg = load_section(GRPOTrainConfig, config, "grpo", overrides(sets, **flags))
    _report(train_grpo(cfg))


@train_app.command(
    "distiller",
    epilog="Examples:\n\n    lmmixup train distiller --run-dir runs/distiller      # the bundled recipe\n\n"
    "    lmmixup train distiller my_recipe.yaml -d runs/distiller2 --set sft.max_steps=96\n\n"
    "    lmmixup train distiller -d runs/smoke --set sft.max_steps=2 --set grpo.max_steps=1 "
    "--set eval.limit=4 --set eval.max_new_tokens=96\n\n"
    "    lmmixup train distiller --show-config > my_recipe.yaml   # the recipe, to edit\n\n"
    "Then distil with the trained model: `lmmixup distill ... --model DIR/grpo/final`, or "
    "`distill.generator.model: DIR/grpo/final` in a run config (`lmmixup run`). "
    "DIR/eval/results.md compares it with the base model and the SFT model; DIR/report.html "
    "shows the training curves.",
)
def distiller(
    config: Annotated[
        Path | None,
        typer.Argument(
            help="Recipe (YAML) laid over the bundled one: only the keys it changes; none = the bundled recipe."
        ),
    ] = None,
    run_dir: Annotated[
        Path, typer.Option("--run-dir", "-d", help="Folder for every stage and the report.")
    ] = Path("runs/distiller"),
    sets: SetOpt = None,
    force: ForceStagesOpt = False,
    show_config: Annotated[
        bool, typer.Option("--show-config", help="Print the bundled recipe (YAML) and exit.")
    ] = False,
) -> None:
    """Train the distiller end to end as one resumable run: MIXTURE data, a rated pool and the
    quality reward's library, SFT, GRPO, then base vs SFT vs GRPO on the held-out split.

    Each stage is a folder of the run directory with a manifest: a re-run skips finished
    stages and continues an interrupted one (training from its last checkpoint, rating and
    evaluation from the call cache). The bundled recipe takes about 48 minutes on 2 CPU cores.
    """
    if show_config:
        from lmmixup.workflows.distiller_config import bundled_config_text

        typer.echo(bundled_config_text(), nl=False)
        return
    from lmmixup.workflows.distiller import run_distiller
    from lmmixup.workflows.distiller_config import load_distiller_config

    cfg = load_distiller_config(config, sets or [])
    _print_distiller(run_distiller(cfg, run_dir, force=force))


def _print_distiller(summary: dict[str, Any]) -> None:
    """Each stage's status and time, the evaluation table, warnings, and what to run next."""
    for name, stage in summary["stages"].items():
        status = "skipped (done)" if stage["skipped"] else stage["status"]
        typer.echo(f"{name:8} {status:15} {stage['seconds'] or 0:9.1f} s")
    table = Path(summary["outputs"]["eval.table"])
    if table.is_file():
        typer.echo("\n" + table.read_text(encoding="utf-8"))
    from lmmixup.cli.commands.run import print_warnings

    typer.echo(f"trained distiller: {summary['distiller']}")
    typer.echo(f"  use it: lmmixup distill ... --model {summary['distiller']}")
    typer.echo(f"report: {summary['report']}")
    print_warnings(summary["warnings"])
