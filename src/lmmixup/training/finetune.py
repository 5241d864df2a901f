"""Downstream fine-tune (SPEC stage 9): LoRA on a prompt/completion training set, e.g. the one
`lmmixup select` writes, to compare training sets by the benchmarks of the tuned model.

Each row becomes one chat exchange rendered with the model's chat template (user = prompt,
assistant = completion); the loss covers the completion and the EOS after it, never the prompt
(the rows are tokenised like the distiller's SFT rows, see `examples.completion_example`). A model
without a chat template (a base model) gets a minimal one, saved with the final model so
inference renders prompts the same way.

Defaults follow SPEC stage 9 (LLaMA-3.1-8B, LoRA rank 64, alpha 16, dropout 0.1, lr 1e-4,
linear schedule with 3% warmup, 5 epochs, batch 128, max length 2,048) scaled to a CPU:
3 epochs (each pass over a set costs CPU minutes per arm of an experiment; set `epochs: 5` for
the paper's) and batch 8 (a batch of 128 would give a few-hundred-row set one step per epoch;
raise `gradient_accumulation_steps` for the paper's effective batch).

Lines of the training set that are not usable rows go to OUTPUT/rejects.jsonl with their file
and line; with `decontaminate_against`, rows sharing an n-gram with those evaluation files
(see `lmmixup.stages.decontaminate`) are dropped before training and written there too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from lmmixup.errors import LmmixupError
from lmmixup.io.jsonl import reject_record, write_records
from lmmixup.io.sources import open_source
from lmmixup.stages.decontaminate import DEFAULT_N, MIN_WORDS, decontaminate, read_eval_sets
from lmmixup.training.examples import Rows, completion_example, fitting_rows
from lmmixup.training.settings import GROUP_BY_LENGTH, BaseTrainSettings, LoraSettings
from lmmixup.training.trainer import load_model_and_tokenizer, run_training, supervised_trainer

LORA_LEARNING_RATE = 1e-4
FULL_LEARNING_RATE = 1e-5
REJECTS_FILE = "rejects.jsonl"
# For tokenizers without a chat template: each turn as "<|role|>", newline, content, newline.
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


class FinetuneLoraSettings(LoraSettings):
    """LoRA adapters with the paper's downstream settings."""

    r: int = Field(64, ge=1, description="Adapter rank (paper: 64).")
    alpha: int = Field(
        16, ge=1, description="Adapter scaling numerator, scale = alpha / r (paper: 16)."
    )
    dropout: float = Field(
        0.1, ge=0, lt=1, description="Dropout on the adapter input (paper: 0.1)."
    )


class FinetuneConfig(BaseTrainSettings):
    """`lmmixup finetune`: LoRA fine-tune of a target model on a prompt/completion training set."""

    train: str = Field(
        description="Training set: prompt/completion JSONL (e.g. from `lmmixup select`)."
    )
    output_dir: str = Field(
        "runs/finetune",
        description="Checkpoints, steps.jsonl, rejects.jsonl, summary.json and the merged model (OUTPUT/final).",
    )
    lora: FinetuneLoraSettings = Field(
        default_factory=FinetuneLoraSettings, description="LoRA adapters."
    )
    epochs: float = Field(3.0, gt=0, description="Passes over the training set (paper: 5).")
    warmup_ratio: float = Field(
        0.03, ge=0, lt=1, description="Share of the steps with linear warmup (paper: 3%)."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule after warmup (paper: linear)."
    )
    max_length: int = Field(
        2048,
        ge=16,
        description="Longest prompt + completion in tokens (paper: 2,048); longer rows are left out and counted, never truncated.",
    )
    batch_size: int = Field(8, ge=1, description="Sequences per forward/backward pass.")
    gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        description="Passes per optimizer step (effective batch = batch_size x this; paper: 128).",
    )
    group_by_length: bool = GROUP_BY_LENGTH
    decontaminate_against: dict[str, str] = Field(
        default_factory=dict,
        description="Evaluation files by task name ({name: JSONL}); training rows sharing an n-gram with them are dropped before training.",
    )
    decontam_n: int = Field(
        DEFAULT_N, ge=1, description="Words per n-gram for decontamination (13 as in GPT-3)."
    )
    decontam_min_words: int = Field(
        MIN_WORDS,
        ge=1,
        description="Evaluation texts shorter than the n-gram but with at least this many words are matched whole; shorter ones are skipped.",
    )


@dataclass
class TrainingSet:
    """The usable rows of a training file and a reject record for every other line."""

    rows: list[dict]
    rejects: list[dict]


def read_training_set(path: str | Path) -> TrainingSet:
    """Rows of a training set (JSONL, Parquet or a saved dataset folder, as `select` writes
    them) with non-empty string `prompt` and `completion` (kept as given); any other line
    becomes a reject naming the file and line."""
    path = Path(path)
    if not path.exists():
        raise LmmixupError(f"training set not found: {path}")
    rows, rejects = [], []
    for line in open_source(str(path)).lines:
        reason = line.error or _row_problem(line.value)
        if reason:
            rejects.append(reject_record(path, line.number, reason, line.raw))
        else:
            rows.append(line.value)
    return TrainingSet(rows, rejects)


def _row_problem(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"a row must be a JSON object, got {type(value).__name__}"
    for key in ("prompt", "completion"):
        if not isinstance(value.get(key), str) or not value[key].strip():
            return f"missing or empty '{key}' (a string is needed)"
    return None


def ensure_chat_template(tokenizer: Any) -> None:
    """Give a tokenizer without a chat template the plain one (kept when the model is saved)."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE


def finetune_example(row: dict, tokenizer: Any) -> dict[str, list[int]]:
    """Tokens and labels of one row: the user prompt masked, the completion and EOS supervised."""
    return completion_example(
        tokenizer, [{"role": "user", "content": row["prompt"]}], row["completion"]
    )


def prepare_rows(cfg: FinetuneConfig) -> tuple[list[dict], dict[str, Any]]:
    """The rows to train on, after rejects and decontamination (both written to OUTPUT/rejects.jsonl),
    and what was left out, for the summary."""
    data = read_training_set(cfg.train)
    dropped: list[dict] = []
    report = None
    rows = data.rows
    if cfg.decontaminate_against:
        eval_sets = read_eval_sets(cfg.decontaminate_against)
        rows, dropped, report = decontaminate(
            rows, eval_sets, cfg.decontam_n, cfg.decontam_min_words
        )
    rejects = Path(cfg.output_dir) / REJECTS_FILE
    write_records(rejects, data.rejects + dropped)
    if not rows:
        raise LmmixupError(
            f"{cfg.train}: no row left to train on ({len(data.rejects)} bad lines, "
            f"{len(dropped)} contaminated; see {rejects})"
        )
    left_out = {
        "train": cfg.train,
        "rejected": len(data.rejects),
        "contaminated": len(dropped),
        "rejects": str(rejects),
        "decontamination": report.to_dict() if report else None,
    }
    return rows, left_out


def build_finetune_trainer(cfg: FinetuneConfig):
    """The SFTTrainer, its tokenizer, its rows and what was left out, ready to train."""
    rows, left_out = prepare_rows(cfg)
    model, tokenizer = load_model_and_tokenizer(cfg.model)
    ensure_chat_template(tokenizer)
    fitting: Rows = fitting_rows(
        rows,
        lambda row: finetune_example(row, tokenizer),
        lambda example: len(example["input_ids"]),
        cfg.max_length,
        "max_length",
    )
    learning_rate = cfg.resolved_learning_rate(LORA_LEARNING_RATE, FULL_LEARNING_RATE)
    trainer = supervised_trainer(cfg, model, tokenizer, fitting, learning_rate)
    return trainer, tokenizer, fitting, left_out


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run (or resume) the fine-tune, save the merged model in OUTPUT/final and OUTPUT/summary.json;
    returns the summary (rows used, too long, rejected, contaminated, steps, loss, seconds)."""
    trainer, tokenizer, rows, left_out = build_finetune_trainer(cfg)
    return run_training(trainer, tokenizer, cfg, rows, left_out)
