"""Stage 8: GRPO of the distiller on MIXTURE `grpo_train.jsonl` with the three rewards.

`R = w_q * quality + w_a * alignment + w_f * format` (SPEC stage 8; `lmmixup.rewards`). The
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

import importlib.util
from typing import Any, Literal

from pydantic import Field, model_validator

from lmmixup.config import OPERATIONAL
from lmmixup.errors import ConfigError, LmmixupError
from lmmixup.rewards.config import COMPONENTS, RewardSet, RewardSettings, load_reward_set
from lmmixup.training.examples import fitting_rows, grpo_row, prompt_ids, read_split
from lmmixup.training.settings import TrainSettings
from lmmixup.training.steps import STEPS_FILE, step_logger
from lmmixup.training.trainer import (
    compact_lm_head_on_cpu,
    load_model_and_tokenizer,
    lora_config,
    run_training,
    trainer_arguments,
)

LORA_LEARNING_RATE = 1e-5
FULL_LEARNING_RATE = 1e-6


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
    use_vllm: bool = Field(
        False,
        description="Sample the groups with vLLM on the training GPU (TRL's use_vllm, vllm_mode colocate): much faster sampling on a GPU; needs a CUDA GPU and the vllm package (pip install 'lmmixup[vllm]').",
    )
    vllm_gpu_memory_utilization: float = Field(
        0.3,
        gt=0,
        lt=1,
        description="use_vllm: share of the GPU's memory vLLM may take; the rest is the trainer's.",
        json_schema_extra=OPERATIONAL,
    )
    vllm_tensor_parallel_size: int = Field(
        1,
        ge=1,
        description="use_vllm: GPUs vLLM splits the model across.",
        json_schema_extra=OPERATIONAL,
    )

    @model_validator(mode="after")
    def _micro_batches_divide_the_step(self) -> GRPOTrainConfig:
        completions = self.prompts_per_step * self.num_generations
        if completions % self.micro_batches:
            raise ValueError(
                f"micro_batches ({self.micro_batches}) must divide the step's "
                f"{completions} completions (prompts_per_step x num_generations)"
            )
        return self


def vllm_arguments(cfg: GRPOTrainConfig) -> dict[str, Any]:
    """GRPOConfig's vLLM arguments (none without `use_vllm`); refuses, before anything loads,
    a machine without the vllm package or a CUDA GPU."""
    if not cfg.use_vllm:
        return {}
    import torch

    missing = [
        what
        for what, present in (
            ("the vllm package (pip install 'lmmixup[vllm]')", importlib.util.find_spec("vllm")),
            ("a CUDA GPU", torch.cuda.is_available()),
        )
        if not present
    ]
    if missing:
        raise ConfigError(
            f"grpo.use_vllm: sampling with vLLM needs {' and '.join(missing)}, which this "
            "machine lacks; set use_vllm: false to sample with transformers"
        )
    return {
        "use_vllm": True,
        "vllm_mode": "colocate",
        "vllm_gpu_memory_utilization": cfg.vllm_gpu_memory_utilization,
        "vllm_tensor_parallel_size": cfg.vllm_tensor_parallel_size,
        "vllm_max_model_length": cfg.max_prompt_length + cfg.max_completion_length,
    }


def build_grpo_trainer(cfg: GRPOTrainConfig, rewards: RewardSet):
    """The GRPOTrainer, its tokenizer and its rows (prompts within `max_prompt_length`), ready
    to train."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    if set(rewards.functions) != set(COMPONENTS):
        raise LmmixupError(f"GRPO needs all reward components {COMPONENTS}")
    sampling = vllm_arguments(cfg)
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
        reward_weights=rewards.for_trainer()[1],
        **sampling,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=rewards.for_trainer()[0],
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
    vllm_arguments(cfg)  # a machine that cannot sample with vLLM is refused before any load
    rewards = rewards or load_reward_set(cfg.rewards, require_quality=True)
    trainer, tokenizer, rows = build_grpo_trainer(cfg, rewards)
    return run_training(trainer, tokenizer, cfg, rows)
