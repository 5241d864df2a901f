"""What SFT, GRPO and the downstream fine-tune share: settings, MIXTURE rows, prompt/completion
tokenisation, the supervised trainer, LoRA, precision, checkpoints, the final save and the
per-step JSONL log.

Prompts are rendered exactly as `HFChatModel` renders them at inference (chat template with the
generation prompt, then tokenised without special tokens), so the distiller is trained on the
context it later sees in `lmmixup distill`.
"""

from __future__ import annotations

import importlib.util
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from lmmixup.config import DEFAULT_LM, OPERATIONAL, Section
from lmmixup.errors import LmmixupError
from lmmixup.io.jsonl import dumps, iter_jsonl, read_records
from lmmixup.method.prompt import prompt_messages, target_text
from lmmixup.runtime.runner import write_manifest

FINAL_DIR = "final"
STEPS_FILE = "steps.jsonl"
SUMMARY_FILE = "summary.json"
IGNORE_INDEX = -100


# ---------------------------------------------------------------------------- settings


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


# ---------------------------------------------------------------------------- MIXTURE rows


def read_split(mixture_dir: str | Path, split: str) -> list[dict]:
    """The records of one MIXTURE split file (`sft`, `grpo_train`, `grpo_test`); never empty."""
    path = Path(mixture_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise LmmixupError(f"{path} does not exist; build it with `lmmixup mixture build -o DIR`")
    records = read_records(path)
    if not records:
        raise LmmixupError(f"{path} holds no records")
    return records


def prompt_ids(tokenizer: Any, messages: list[dict]) -> list[int]:
    """Token ids of a chat prompt ready for the reply, as `HFChatModel` feeds it."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def completion_example(
    tokenizer: Any, messages: list[dict], completion: str
) -> dict[str, list[int]]:
    """Tokens and labels of a chat prompt and its reply: the prompt masked, the reply plus EOS
    supervised.

    The prompt is rendered as `prompt_ids` renders it; the reply is tokenised on its own and
    followed by the tokenizer's EOS token, so the model learns to stop right after it.
    """
    if tokenizer.eos_token_id is None:
        raise LmmixupError("the tokenizer has no EOS token; training targets must end with one")
    prompt = prompt_ids(tokenizer, messages)
    target = tokenizer(completion, add_special_tokens=False)["input_ids"]
    target.append(tokenizer.eos_token_id)
    return {"input_ids": prompt + target, "labels": [IGNORE_INDEX] * len(prompt) + target}


def sft_example(record: dict, tokenizer: Any) -> dict[str, list[int]]:
    """Tokens and labels of one SFT record: the cluster prompt masked, `mixture.target_text(record)`
    plus EOS supervised (so the model stops right after `</answer>`)."""
    return completion_example(tokenizer, prompt_messages(record), target_text(record))


def grpo_row(record: dict) -> dict[str, Any]:
    """One GRPO prompt: the chat messages, the task type and the reference answer for alignment."""
    return {
        "prompt": prompt_messages(record),
        "task_type": record["task_type"],
        "reference": record["answer"],
    }


@dataclass(frozen=True)
class Rows:
    """Training rows that fit the length limit, and how many records did not."""

    rows: list[dict]
    too_long: int


def fitting_rows(
    records: list[dict],
    make_row: Callable[[dict], dict],
    length: Callable[[dict], int],
    limit: int,
    what: str,
) -> Rows:
    """The rows of records whose `length` is at most `limit`; an error when none fits.

    An over-long record is left out, never truncated: a cut target would lose its EOS and a
    cut prompt its members.
    """
    rows, too_long = [], 0
    for record in records:
        row = make_row(record)
        if length(row) <= limit:
            rows.append(row)
        else:
            too_long += 1
    if not rows:
        raise LmmixupError(f"no record fits {what}={limit} tokens ({too_long} are longer)")
    return Rows(rows, too_long)


# ---------------------------------------------------------------------------- model and trainer


def lora_config(settings: LoraSettings):
    """The PEFT LoRA config, or None for a full fine-tune."""
    if not settings.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        task_type="CAUSAL_LM",
    )


def load_model_and_tokenizer(name: str):
    """A causal LM in float32 (the trainer's master weights) and its tokenizer.

    `name` is a checkpoint path or a bundled name; a tokenizer without a pad token pads with EOS.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmmixup.io.assets import resolve_model

    path = resolve_model(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, tokenizer


def compact_lm_head_on_cpu() -> None:
    """Make TRL's fused LM head score only the labelled positions on CPU too.

    TRL 1.16 projects every position (the prompt included) through the LM head when it does
    not use Triton, to keep tile shapes fixed for compiled backends; in eager CPU mode that
    only costs time and memory (a tiny-model GRPO step: 2x the time, 6x the memory). The
    switch is `trl.trainer.utils._use_triton`, which there decides only that; the kernels
    module keeps its own reference, so the tiles are still folded by its torch fallback.
    Idempotent; a TRL without the switch is left alone. tests/test_training.py checks that
    both paths give the same log-probabilities.
    """
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None or getattr(original, "compact_on_cpu", False):
        return

    def use_compact(device) -> bool:
        return device.type == "cpu" or original(device)

    use_compact.compact_on_cpu = True
    trl_utils._use_triton = use_compact


def supervised_trainer(
    cfg: BaseTrainSettings, model: Any, tokenizer: Any, rows: Rows, learning_rate: float
):
    """TRL's SFTTrainer on tokenised rows (`input_ids`, `labels`: the loss covers the labelled
    tokens only), with the steps logged to OUTPUT/steps.jsonl.

    Besides the common keys, `cfg` gives epochs, warmup_ratio, weight_decay, lr_scheduler,
    batch_size, gradient_accumulation_steps, max_length and group_by_length (`lmmixup train
    sft` and `lmmixup finetune` both have them).
    """
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    compact_lm_head_on_cpu()
    args = SFTConfig(
        **trainer_arguments(cfg, learning_rate),
        num_train_epochs=cfg.epochs,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a value below 1 is a share of the steps
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_length=cfg.max_length,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows.rows),
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora),
        callbacks=[step_logger(f"{cfg.output_dir}/{STEPS_FILE}")],
    )


def precision_flags(dtype: str) -> dict[str, bool]:
    """Trainer mixed-precision flags for the configured dtype, chosen like `pick_dtype`."""
    import torch

    from lmmixup.backends.hf import pick_dtype

    chosen = pick_dtype(dtype)
    return {"bf16": chosen == torch.bfloat16, "fp16": chosen == torch.float16}


def report_targets() -> list[str]:
    """Where the trainer reports besides steps.jsonl: TensorBoard when it is installed."""
    return ["tensorboard"] if importlib.util.find_spec("tensorboard") else []


def trainer_arguments(cfg: BaseTrainSettings, learning_rate: float) -> dict[str, Any]:
    """The TRL/transformers arguments both trainers take from the shared settings."""
    import torch

    return {
        "output_dir": cfg.output_dir,
        "learning_rate": learning_rate,
        "max_steps": cfg.max_steps or -1,
        "save_strategy": "steps",
        "save_steps": cfg.save_steps,
        "save_total_limit": cfg.save_total_limit,
        "logging_steps": cfg.logging_steps,
        "seed": cfg.seed,
        "report_to": report_targets(),
        "use_cpu": not torch.cuda.is_available(),
        "disable_tqdm": True,
        "activation_checkpointing": cfg.gradient_checkpointing,
        **precision_flags(cfg.dtype),
    }


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest `checkpoint-N` folder of a previous run, None when there is none."""
    from transformers.trainer_utils import get_last_checkpoint

    folder = Path(output_dir)
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def save_final(model: Any, tokenizer: Any, out_dir: str | Path) -> Path:
    """Write a plain HF checkpoint (LoRA merged; tokenizer and chat template) that `HFChatModel` loads.

    Written to a temporary folder and renamed into place, so a crash never leaves half a model.
    """
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    final = Path(out_dir)
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return final


# ---------------------------------------------------------------------------- the step log


class StepLog:
    """Trainer callback methods: append every trainer log to a JSONL file, with wall times.

    `clocks` maps a part's name (e.g. "reward") to a function returning the seconds spent in
    it so far; a logged line gets the latest step's `step_seconds`, `{name}_seconds` and
    `{name}_fraction` (of `step_seconds`). On a resumed run, lines past the checkpoint's step
    are dropped first, so the file never holds a step twice (nor a line cut by a crash).
    """

    def __init__(self, path: str | Path, clocks: Mapping[str, Callable[[], float]] | None = None):
        self.path = Path(path)
        self.clocks = dict(clocks or {})
        self._started = 0.0
        self._clock_start: dict[str, float] = {}
        self._timing: dict[str, float] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.path.exists():
            kept = [
                line.raw
                for line in iter_jsonl(self.path)
                if line.error is None and line.value.get("step", 0) <= state.global_step
            ]
            self.path.write_text("".join(f"{raw}\n" for raw in kept), encoding="utf-8")

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()
        self._clock_start = {name: clock() for name, clock in self.clocks.items()}

    def on_step_end(self, args, state, control, **kwargs):
        seconds = time.perf_counter() - self._started
        timing = {"step_seconds": seconds}
        for name, clock in self.clocks.items():
            part = clock() - self._clock_start[name]
            timing[f"{name}_seconds"] = part
            timing[f"{name}_fraction"] = part / seconds if seconds > 0 else 0.0
        self._timing = timing

    def on_log(self, args, state, control, logs=None, **kwargs):
        line = {"step": state.global_step, "epoch": state.epoch, "time": time.time()}
        line.update(logs or {})
        if self._timing is not None:
            line.update(self._timing)
            self._timing = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(dumps(line) + "\n")


def step_logger(path: str | Path, clocks: Mapping[str, Callable[[], float]] | None = None):
    """A transformers `TrainerCallback` with the `StepLog` behaviour (transformers loads here)."""
    from transformers import TrainerCallback

    return type("StepLogger", (StepLog, TrainerCallback), {})(path, clocks)


def read_steps(output_dir: str | Path) -> list[dict]:
    """The lines of a run's steps.jsonl (empty when it has none)."""
    path = Path(output_dir) / STEPS_FILE
    return read_records(path) if path.exists() else []


def mean_step_seconds(steps: list[dict]) -> float | None:
    """Mean wall time of the logged steps, None when no step was timed."""
    times = [line["step_seconds"] for line in steps if "step_seconds" in line]
    return sum(times) / len(times) if times else None


def last_loss(steps: list[dict]) -> float | None:
    """The training loss of the last logged step, None when no loss was logged."""
    losses = [line["loss"] for line in steps if "loss" in line]
    return losses[-1] if losses else None


# ---------------------------------------------------------------------------- a run


def run_training(
    trainer: Any,
    tokenizer: Any,
    cfg: BaseTrainSettings,
    rows: Rows,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train (resuming from the newest checkpoint in the output folder), save the final model,
    and write `summary.json` (with the command's `extra` keys); returns the summary.

    Re-running the same command therefore continues an interrupted run; a run that already
    reached `max_steps` only saves its final model again.
    """
    resumed_from = last_checkpoint(cfg.output_dir)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resumed_from)
    seconds = time.perf_counter() - started
    model = trainer.accelerator.unwrap_model(trainer.model)
    final = save_final(model, tokenizer, Path(cfg.output_dir) / FINAL_DIR)
    steps = read_steps(cfg.output_dir)
    summary = {
        "final": str(final),
        "global_step": trainer.state.global_step,
        "resumed_from": resumed_from,
        "rows": len(rows.rows),
        "too_long": rows.too_long,
        "seconds": round(seconds, 2),
        "mean_step_seconds": mean_step_seconds(steps),
        "loss": last_loss(steps),
        **(extra or {}),
        "config": cfg.model_dump(mode="json"),
    }
    write_manifest(Path(cfg.output_dir) / SUMMARY_FILE, summary)
    return summary
