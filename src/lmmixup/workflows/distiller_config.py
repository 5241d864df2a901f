"""The config of `lmmixup train distiller`: one section per stage of the recipe.

`DistillerRunConfig` is the bundled recipe (configs/distiller.yaml) with a user's file laid
over it (a file needs only the keys it changes) and `--set` overrides applied. The paths
between stages (the mixture the trainers read, where they write, the SFT model GRPO starts
from, the quality library) belong to the run directory: the run sets them, a config may not.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field

from lmmixup.config import (
    DEFAULT_EMBEDDER,
    ImportConfig,
    RateConfig,
    RunConfig,
    Section,
    apply_overrides,
    load_yaml,
    validate,
)
from lmmixup.errors import ConfigError
from lmmixup.evaluation.distiller import EvalDistillerConfig
from lmmixup.mixture import MixtureConfig
from lmmixup.rewards.config import RewardSettings
from lmmixup.rewards.library import MIN_TASK_SAMPLES
from lmmixup.training.grpo import GRPOTrainConfig
from lmmixup.training.sft import SFTTrainConfig
from lmmixup.training.trainer import FINAL_DIR
from lmmixup.workflows.pipeline import config_problems

BUNDLED = "distiller.yaml"
LIBRARY_DIR = "quality-library"
EvalModel = Literal["base", "sft", "grpo"]
# Keys of the sections that the run sets itself (paths inside the run directory).
RUN_SET = {
    "sft": {"mixture", "output_dir"},
    "grpo": {"model", "mixture", "output_dir"},
}


class LibraryConfig(Section):
    """The `library:` section: the quality reward's library, as `lmmixup rewards build-library`."""

    embedder: str = Field(
        DEFAULT_EMBEDDER, description="Sentence embedder the library's vectors come from."
    )
    by_task: bool = Field(True, description="Also fit one scorer per task type.")
    min_task_samples: int = Field(
        MIN_TASK_SAMPLES,
        ge=2,
        description="A task type with fewer rated records is left to the 'default' scorer.",
    )
    k_transition: int = Field(
        3, ge=1, description="Neighbours used to estimate the transition matrix."
    )


class DistillerEvalSettings(EvalDistillerConfig):
    """The `eval:` section: `lmmixup eval distiller` settings plus which models to compare."""

    models: list[EvalModel] = Field(
        default_factory=lambda: ["base", "sft", "grpo"],
        min_length=1,
        description="Models compared on grpo_test.jsonl: base (sft.model, untrained), sft (sft/final), grpo (grpo/final).",
    )
    rewards: RewardSettings | None = Field(
        None,
        description="The reward components; null = grpo.rewards. The run sets quality_library to its library.",
    )


class DistillerRunConfig(Section):
    """`lmmixup train distiller`: the whole recipe, one section per stage."""

    mixture: MixtureConfig = Field(
        default_factory=MixtureConfig,
        description="Stage mixture: the distiller's training data (`lmmixup mixture build`).",
    )
    pool: ImportConfig = Field(
        default_factory=ImportConfig,
        description="Stage pool: the rows the quality library is fitted on (`lmmixup data import`; sources here).",
    )
    rate: RateConfig = Field(
        default_factory=RateConfig, description="Stage rate: rate the pool (`lmmixup rate`)."
    )
    library: LibraryConfig = Field(
        default_factory=LibraryConfig,
        description="Stage library: the quality reward's kNN-Bayes library.",
    )
    sft: SFTTrainConfig = Field(
        default_factory=SFTTrainConfig,
        description="Stage sft (`lmmixup train sft`); mixture and output_dir are set by the run.",
    )
    grpo: GRPOTrainConfig = Field(
        default_factory=GRPOTrainConfig,
        description="Stage grpo (`lmmixup train grpo`) from sft/final; model, mixture, output_dir and rewards.quality_library are set by the run.",
    )
    eval: DistillerEvalSettings = Field(
        default_factory=DistillerEvalSettings,
        description="Stage eval (`lmmixup eval distiller`) on the mixture's grpo_test.jsonl.",
    )


# ---------------------------------------------------------------------------- config


def bundled_config() -> dict:
    """The bundled recipe (configs/distiller.yaml)."""
    text = resources.files("lmmixup") / "configs" / BUNDLED
    with resources.as_file(text) as path:
        return load_yaml(path)


def bundled_config_text() -> str:
    """The bundled recipe's YAML text, comments included."""
    return (resources.files("lmmixup") / "configs" / BUNDLED).read_text(encoding="utf-8")


def _merged(base: dict, extra: dict) -> dict:
    """`base` with `extra` laid over it, mapping by mapping (lists and values replace)."""
    out = dict(base)
    for key, value in extra.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if both else value
    return out


def load_distiller_config(path: str | Path | None, overrides: list[str]) -> DistillerRunConfig:
    """The bundled recipe with the file at `path` (if any) laid over it, then the overrides;
    checked for what cannot work before any stage runs."""
    data = bundled_config()
    if path is not None:
        data = _merged(data, load_yaml(path))
    apply_overrides(data, overrides)
    origin = str(path) if path else "bundled distiller recipe"
    cfg = validate(DistillerRunConfig, data, origin)
    problems = run_set_problems(cfg) + [
        problem.replace("import.", "pool.", 1)
        for problem in config_problems(
            RunConfig.model_validate({"import": cfg.pool, "rate": cfg.rate})
        )
    ]
    if problems:
        raise ConfigError("\n".join(f"{origin}: {problem}" for problem in problems))
    return cfg


def run_set_problems(cfg: DistillerRunConfig) -> list[str]:
    """Keys the config sets although the run sets them (paths into the run directory)."""
    found = [
        f"{section}.{key}"
        for section, keys in RUN_SET.items()
        for key in sorted(keys & getattr(cfg, section).model_fields_set)
    ]
    if "quality_library" in cfg.grpo.rewards.model_fields_set:
        found.append("grpo.rewards.quality_library")
    if cfg.eval.rewards is not None and "quality_library" in cfg.eval.rewards.model_fields_set:
        found.append("eval.rewards.quality_library")
    return [f"{key}: set by the run (a path in the run directory); leave it out" for key in found]


def grpo_settings(cfg: DistillerRunConfig, inputs: dict[str, Path], output: Path):
    """The grpo section with the run's paths: the SFT model, the mixture, the library."""
    rewards = cfg.grpo.rewards.model_copy(update={"quality_library": str(inputs["library"])})
    return cfg.grpo.model_copy(
        update={
            "model": str(inputs["model"]),
            "mixture": str(inputs["grpo_train"].parent),
            "output_dir": str(output),
            "rewards": rewards,
        }
    )


def eval_settings(cfg: DistillerRunConfig, library: Path) -> EvalDistillerConfig:
    """The eval section as `lmmixup eval distiller` takes it: rewards from grpo when unset,
    the run's library."""
    rewards = (cfg.eval.rewards or cfg.grpo.rewards).model_copy(
        update={"quality_library": str(library)}
    )
    data = cfg.eval.model_dump(exclude={"models", "rewards"})
    return EvalDistillerConfig.model_validate({**data, "rewards": rewards.model_dump()})


RESOLVED_NOTE = (
    "# The config this run used. sft.mixture, sft.output_dir, grpo.model, grpo.mixture,\n"
    "# grpo.output_dir and the rewards' quality_library are the run's own paths: leave them out\n"
    "# of a config you pass to `lmmixup train distiller`.\n"
)


def resolved(cfg: DistillerRunConfig, run_dir: Path) -> DistillerRunConfig:
    """The config with the paths the run sets filled in (for the record in config.yaml)."""
    library = run_dir / "library" / LIBRARY_DIR
    inputs = {
        "model": run_dir / "sft" / FINAL_DIR,
        "grpo_train": run_dir / "mixture" / "grpo_train.jsonl",
        "library": library,
    }
    sft = cfg.sft.model_copy(
        update={"mixture": str(run_dir / "mixture"), "output_dir": str(run_dir / "sft")}
    )
    rewards = None
    if cfg.eval.rewards is not None:
        rewards = cfg.eval.rewards.model_copy(update={"quality_library": str(library)})
    return cfg.model_copy(
        update={
            "sft": sft,
            "grpo": grpo_settings(cfg, inputs, run_dir / "grpo"),
            "eval": cfg.eval.model_copy(update={"rewards": rewards}),
        }
    )
