"""Stage 7: cold-start SFT of the distiller on MIXTURE `sft.jsonl` (cluster prompt -> target).

Each record becomes a prompt/completion pair: the prompt is `method.prompt.prompt_messages(record)`
(the prompt `lmmixup distill` sends), the completion is `method.prompt.target_text(record)` followed
by the tokenizer's EOS token. The loss covers the completion only. The rows are tokenised here
(TRL's conversational prompt/completion path would also supervise the chat template's trailing
newline after EOS), and TRL's SFTTrainer trains on them.

Defaults follow SPEC stage 7 scaled to a CPU: the paper fully fine-tunes Qwen2.5-1.5B with
lr 2e-5, warmup 5%, weight decay 0.01, 1 epoch, max length 2,400. Here LoRA is the default
(lr 2e-4; a full fine-tune keeps the paper's 2e-5), and max length is 1,024 tokens; warmup,
weight decay and epochs are the paper's.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from lmmixup.training.examples import fitting_rows, read_split, sft_example
from lmmixup.training.settings import GROUP_BY_LENGTH, TrainSettings
from lmmixup.training.trainer import load_model_and_tokenizer, run_training, supervised_trainer

LORA_LEARNING_RATE = 2e-4
FULL_LEARNING_RATE = 2e-5


class SFTTrainConfig(TrainSettings):
    """`lmmixup train sft`: supervised cold start of the distiller."""

    output_dir: str = Field(
        "runs/distiller/sft",
        description="Checkpoints, steps.jsonl, summary.json and the final model (OUTPUT/final).",
    )
    epochs: float = Field(1.0, gt=0, description="Passes over sft.jsonl (paper: 1).")
    warmup_ratio: float = Field(
        0.05, ge=0, lt=1, description="Share of the steps with linear warmup (paper: 5%)."
    )
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (paper: 0.01).")
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule after warmup."
    )
    max_length: int = Field(
        1024,
        ge=16,
        description="Longest prompt + target in tokens (paper: 2,400); longer records are left out and counted, never truncated.",
    )
    batch_size: int = Field(4, ge=1, description="Sequences per forward/backward pass.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Passes per optimizer step (effective batch = batch_size x this)."
    )
    group_by_length: bool = GROUP_BY_LENGTH


def build_sft_trainer(cfg: SFTTrainConfig):
    """The SFTTrainer, its tokenizer and its rows (tokenised, within `max_length`), ready to train."""
    records = read_split(cfg.mixture, "sft")  # before the model load: a missing file fails fast
    model, tokenizer = load_model_and_tokenizer(cfg.model)
    rows = fitting_rows(
        records,
        lambda record: sft_example(record, tokenizer),
        lambda row: len(row["input_ids"]),
        cfg.max_length,
        "max_length",
    )
    learning_rate = cfg.resolved_learning_rate(LORA_LEARNING_RATE, FULL_LEARNING_RATE)
    return supervised_trainer(cfg, model, tokenizer, rows, learning_rate), tokenizer, rows


def train_sft(cfg: SFTTrainConfig) -> dict[str, Any]:
    """Run (or resume) SFT and save OUTPUT/final; returns the run summary."""
    trainer, tokenizer, rows = build_sft_trainer(cfg)
    return run_training(trainer, tokenizer, cfg, rows)
