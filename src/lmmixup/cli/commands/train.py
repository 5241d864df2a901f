"""`lmmixup train ...`: train the distiller: cold-start SFT, then GRPO (SPEC stages 7-8)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from lmmixup.cli.options import ConfigOpt, MaxStepsOpt, SetOpt, load_section, overrides

train_app = typer.Typer(
    help="Train the distiller: cold-start SFT on MIXTURE, then GRPO with the three rewards.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

ModelOpt = Annotated[
    str | None, typer.Option(help="Starting model: checkpoint path or bundled name.")
]
MixtureOpt = Annotated[
    str | None, typer.Option(help="MIXTURE folder from `lmmixup mixture build`.")
]
OutputOpt = Annotated[
    str | None,
    typer.Option("--output-dir", "-o", help="Checkpoints, steps.jsonl and OUTPUT/final."),
]


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
    "    lmmixup train sft -c examples/train_distiller.yaml --max-steps 40\n\n"
    "    lmmixup train sft -c my.yaml --set lora.enabled=false --set learning_rate=2e-5",
)
def sft(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    model: ModelOpt = None,
    mixture: MixtureOpt = None,
    output_dir: OutputOpt = None,
    max_steps: MaxStepsOpt = None,
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
    "    lmmixup train grpo -c examples/train_distiller.yaml --max-steps 20",
)
def grpo(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    model: ModelOpt = None,
    mixture: MixtureOpt = None,
    output_dir: OutputOpt = None,
    max_steps: MaxStepsOpt = None,
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
