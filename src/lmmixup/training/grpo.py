"""Stage 8: GRPO of the distiller on MIXTURE `grpo_train.jsonl` with the three rewards.

`R = w_q * quality + w_a * alignment + w_f * format` (SPEC stage 8; `lmmixup.rewards.functions`). The
components go to TRL's GRPOTrainer as three reward functions with `reward_weights`, so TRL
sums them and logs each one's mean and std per step (`rewards/<name>_reward/mean|std`);
the step log adds the wall time of the step and of the rewards (`reward_seconds`,
`reward_fraction`), which makes "rewards take < 10% of a step" measurable.

Paper settings: 128 prompts x group 4 per step, temperature 1.0, lr 1e-6, KL 0.01 (k3),
clip 0.2 / 0.3. The defaults keep the group, temperature, KL and clip ranges, and scale the
batch to a CPU (2 prompts x 4 per step); with LoRA (the default) the learning rate is 1e-5,
a full fine-tune keeps the paper's 1e-6. The reference model for the KL term is the
adapter-free base under LoRA, so it costs no second copy of the weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from lmmixup.config import DEFAULT_EMBEDDER, Section
from lmmixup.errors import LmmixupError
from lmmixup.method.knn_bayes import ScorerLibrary
from lmmixup.rewards.functions import (
    MIXUP_WEIGHTS,
    Completion,
    RewardFn,
    RewardStats,
    make_alignment_reward,
    make_format_reward,
    make_quality_reward,
)
from lmmixup.training.common import (
    STEPS_FILE,
    TrainSettings,
    compact_lm_head_on_cpu,
    fitting_rows,
    grpo_row,
    load_model_and_tokenizer,
    lora_config,
    prompt_ids,
    read_split,
    run_training,
    step_logger,
    trainer_arguments,
)
from lmmixup.types import Embedder

LORA_LEARNING_RATE = 1e-5
FULL_LEARNING_RATE = 1e-6
COMPONENTS = ("quality", "alignment", "format")


class RewardSettings(Section):
    """The GRPO rewards (SPEC stage 8), also used to score a distiller in `lmmixup eval distiller`."""

    quality_library: str | None = Field(
        None,
        description="kNN-Bayes library folder for the quality reward, built by `lmmixup rewards build-library RATED.jsonl -o DIR` (required by GRPO).",
    )
    quality_mode: Literal["banded", "continuous"] = Field(
        "banded",
        description="banded: the paper's 1 / 0.3 / 0 by expected score; continuous: expected score / 5.",
    )
    alignment_mode: Literal["threshold", "continuous"] = Field(
        "threshold",
        description="threshold: 1 when cosine(answer, reference) >= 0.8 (paper); continuous: the cosine clipped to [0, 1].",
    )
    weights: list[float] = Field(
        default_factory=lambda: list(MIXUP_WEIGHTS),
        description="Weights of quality, alignment and format (paper: [0.5, 0.4, 0.1]).",
    )
    embedder: str = Field(
        DEFAULT_EMBEDDER,
        description="Sentence embedder of the alignment reward (quality uses the library's own).",
    )
    k: int = Field(16, ge=1, description="Quality: library neighbours used to score an answer.")

    @field_validator("weights")
    @classmethod
    def _three_weights(cls, weights: list[float]) -> list[float]:
        if len(weights) != 3 or any(w < 0 for w in weights):
            raise ValueError("weights must be three numbers >= 0: quality, alignment, format")
        return weights


@dataclass
class RewardSet:
    """The reward components by name (quality absent when no library is given), weights, counters."""

    functions: dict[str, RewardFn]
    weights: dict[str, float]
    stats: RewardStats

    def seconds(self) -> float:
        """Wall time spent in these rewards so far."""
        return sum(self.stats.component(name).seconds for name in self.functions)

    def score(self, completions: Sequence[Completion], **columns: Any) -> dict[str, list[float]]:
        """Each component's values and, when all three are present, the weighted `total`."""
        values = {name: fn(completions, **columns) for name, fn in self.functions.items()}
        if set(values) == set(COMPONENTS):
            parts = np.array([values[name] for name in COMPONENTS])
            weights = np.array([self.weights[name] for name in COMPONENTS])
            values["total"] = (weights @ parts).tolist()
        return values


def build_reward_set(
    settings: RewardSettings,
    library: ScorerLibrary | None,
    quality_embedder: Embedder | None,
    alignment_embedder: Embedder,
    stats: RewardStats | None = None,
) -> RewardSet:
    """The reward components from loaded parts; quality only with a library and its embedder."""
    stats = stats or RewardStats()
    functions: dict[str, RewardFn] = {}
    if library is not None and quality_embedder is not None:
        functions["quality"] = make_quality_reward(
            library, quality_embedder, mode=settings.quality_mode, k=settings.k, stats=stats
        )
    functions["alignment"] = make_alignment_reward(
        alignment_embedder, mode=settings.alignment_mode, stats=stats
    )
    functions["format"] = make_format_reward(stats)
    return RewardSet(functions, dict(zip(COMPONENTS, settings.weights, strict=True)), stats)


def load_reward_set(settings: RewardSettings, require_quality: bool) -> RewardSet:
    """The reward components with the configured library and embedders loaded."""
    from lmmixup.backends.embed import load_embedder
    from lmmixup.method.knn_bayes import ScorerFormatError, load_task_scorers
    from lmmixup.rewards.functions import library_embedder

    library = quality_embedder = None
    if settings.quality_library is None:
        if require_quality:
            raise LmmixupError(
                "GRPO needs rewards.quality_library: build one with "
                "`lmmixup rewards build-library RATED.jsonl -o DIR` and set rewards.quality_library=DIR"
            )
    else:
        try:
            library = load_task_scorers(settings.quality_library)
        except (OSError, ScorerFormatError) as error:
            raise LmmixupError(
                f"rewards.quality_library={settings.quality_library}: {error}; "
                "build one with `lmmixup rewards build-library RATED.jsonl -o DIR`"
            ) from None
        quality_embedder = load_embedder(library_embedder(library))
    return build_reward_set(settings, library, quality_embedder, load_embedder(settings.embedder))


# ---------------------------------------------------------------------------- training


class GRPOTrainConfig(TrainSettings):
    """`lmmixup train grpo`: reinforcement learning of the distiller with the three rewards."""

    output_dir: str = Field(
        "runs/distiller/grpo",
        description="Checkpoints, steps.jsonl, summary.json and the final model (OUTPUT/final).",
    )
    rewards: RewardSettings = Field(
        default_factory=RewardSettings, description="The reward and its components."
    )
    num_generations: int = Field(
        4, ge=2, description="Completions sampled per prompt: the group (paper: 4)."
    )
    prompts_per_step: int = Field(2, ge=1, description="Prompts per optimizer step (paper: 128).")
    micro_batches: int = Field(
        1,
        ge=1,
        description="Forward/backward passes each step's completions are split into, their gradients summed: the same update in less memory (sampling stays one batch).",
    )
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (paper: 1.0).")
    beta: float = Field(
        0.01, ge=0, description="KL coefficient, k3 estimator (paper: 0.01; 0 = no KL term)."
    )
    epsilon: float = Field(0.2, gt=0, description="Lower clip range of the ratio (paper: 0.2).")
    epsilon_high: float = Field(
        0.3, gt=0, description="Upper clip range of the ratio (paper: 0.3)."
    )
    loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo"] = Field(
        "dapo",
        description="How token losses are averaged; dapo = over all completion tokens of the batch (token-mean).",
    )
    max_prompt_length: int = Field(
        1024,
        ge=16,
        description="Prompts longer than this (tokens) are left out and counted, never truncated.",
    )
    max_completion_length: int = Field(
        256, ge=8, description="Tokens a sampled completion may have."
    )
    epochs: float = Field(1.0, gt=0, description="Passes over grpo_train.jsonl (paper: 1).")

    @model_validator(mode="after")
    def _micro_batches_divide_the_step(self) -> GRPOTrainConfig:
        completions = self.prompts_per_step * self.num_generations
        if completions % self.micro_batches:
            raise ValueError(
                f"micro_batches ({self.micro_batches}) must divide the step's "
                f"{completions} completions (prompts_per_step x num_generations)"
            )
        return self


def build_grpo_trainer(cfg: GRPOTrainConfig, rewards: RewardSet):
    """The GRPOTrainer, its tokenizer and its rows (prompts within `max_prompt_length`), ready
    to train."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    if set(rewards.functions) != set(COMPONENTS):
        raise LmmixupError(f"GRPO needs all reward components {COMPONENTS}")
    compact_lm_head_on_cpu()
    records = read_split(cfg.mixture, "grpo_train")  # before the model load: fails fast
    model, tokenizer = load_model_and_tokenizer(cfg.model)
    rows = fitting_rows(
        records,
        grpo_row,
        lambda row: len(prompt_ids(tokenizer, row["prompt"])),
        cfg.max_prompt_length,
        "max_prompt_length",
    )
    args = GRPOConfig(
        **trainer_arguments(
            cfg, cfg.resolved_learning_rate(LORA_LEARNING_RATE, FULL_LEARNING_RATE)
        ),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.prompts_per_step * cfg.num_generations // cfg.micro_batches,
        gradient_accumulation_steps=cfg.micro_batches,
        num_generations=cfg.num_generations,
        temperature=cfg.temperature,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        epsilon_high=cfg.epsilon_high,
        loss_type=cfg.loss_type,
        scale_rewards="group",
        max_completion_length=cfg.max_completion_length,
        reward_weights=[rewards.weights[name] for name in COMPONENTS],
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[rewards.functions[name] for name in COMPONENTS],
        args=args,
        train_dataset=Dataset.from_list(rows.rows),
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora),
        callbacks=[step_logger(f"{cfg.output_dir}/{STEPS_FILE}", {"reward": rewards.seconds})],
    )
    return trainer, tokenizer, rows


def train_grpo(cfg: GRPOTrainConfig, rewards: RewardSet | None = None) -> dict[str, Any]:
    """Run (or resume) GRPO and save OUTPUT/final; returns the run summary.

    `rewards` defaults to the configured library and embedders (tests pass fakes).
    """
    rewards = rewards or load_reward_set(cfg.rewards, require_quality=True)
    trainer, tokenizer, rows = build_grpo_trainer(cfg, rewards)
    return run_training(trainer, tokenizer, cfg, rows)
