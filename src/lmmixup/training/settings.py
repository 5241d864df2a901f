"""The keys every training command shares: model, output, LoRA, precision, schedule, saving."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmmixup.config import DEFAULT_LM, OPERATIONAL, Section


class LoraSettings(Section):
    """Low-rank adapters; merged into the weights when the final model is saved."""

    enabled: bool = Field(
        True,
        description="Train LoRA adapters (the default: fits large models in little memory); false = full fine-tune, the paper's choice, which the CPU recipe uses for the 135M distiller (it learnt the answer layouts better at the same step time).",
    )
    r: int = Field(16, ge=1, description="Adapter rank.")
    alpha: int = Field(32, ge=1, description="Adapter scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="Modules that get adapters: a list of names (e.g. [q_proj, v_proj]) or all-linear.",
    )


GROUP_BY_LENGTH = Field(
    True,
    description="Batch sequences of similar length together: less padding, the same sequences (the MIXTURE SFT set pads 38% in random batches; grouped, SFT on 2 CPU cores went from 84 to 105 real tokens/s).",
)


class BaseTrainSettings(Section):
    """Keys every training command has: the model, where to write, how long, how to save."""

    model: str = Field(
        DEFAULT_LM, description="Starting model: a local checkpoint or a bundled name."
    )
    output_dir: str = Field(
        "runs/distiller",
        description="Checkpoints, steps.jsonl, summary.json and the final model (OUTPUT/final).",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA adapters.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="Compute precision: auto = bf16 mixed precision only where the hardware runs it natively (never on AVX2-only CPUs); weights stay float32.",
    )
    learning_rate: float | None = Field(
        None, gt=0, description="Peak learning rate; null = the command's default for LoRA/full."
    )
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (null = run the epochs)."
    )
    save_steps: int = Field(
        50,
        ge=1,
        description="Write a checkpoint every N steps (and at the end); a re-run resumes from the last.",
        json_schema_extra=OPERATIONAL,
    )
    save_total_limit: int | None = Field(
        2,
        ge=1,
        description="Keep at most this many checkpoints (null = all).",
        json_schema_extra=OPERATIONAL,
    )
    logging_steps: int = Field(
        1,
        ge=1,
        description="Log metrics to steps.jsonl every N steps.",
        json_schema_extra=OPERATIONAL,
    )
    gradient_checkpointing: bool = Field(
        True,
        description="Recompute activations in the backward pass: about a third more compute, far less memory (SmolLM2-135M on 8 x 700 tokens peaks near 13 GB without it).",
    )
    seed: int = Field(0, description="Seed for shuffling, adapter init and sampling.")

    def resolved_learning_rate(self, lora_default: float, full_default: float) -> float:
        """The configured learning rate, else the default for LoRA or for a full fine-tune."""
        if self.learning_rate is not None:
            return self.learning_rate
        return lora_default if self.lora.enabled else full_default


class TrainSettings(BaseTrainSettings):
    """Distiller training (SFT, GRPO): the common keys plus the MIXTURE folder it reads."""

    mixture: str = Field(
        "mixture", description="MIXTURE folder written by `lmmixup mixture build`."
    )
