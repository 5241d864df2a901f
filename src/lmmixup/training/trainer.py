"""What SFT, GRPO and the downstream fine-tune share around the trainer: the model, LoRA,
precision, TRL arguments, the supervised trainer, checkpoints, the final save and a whole run
with its `summary.json`."""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmmixup.runtime.manifest import write_manifest
from lmmixup.training.examples import Rows
from lmmixup.training.settings import BaseTrainSettings, LoraSettings
from lmmixup.training.steps import STEPS_FILE, last_loss, mean_step_seconds, read_steps, step_logger

FINAL_DIR = "final"
SUMMARY_FILE = "summary.json"


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
    """The newest complete `checkpoint-N` folder of a previous run, None when there is none.

    The trainer writes a checkpoint's trainer_state.json last: a folder without a readable one
    was cut short (a kill while saving) and is passed over for the one before it.
    """
    folder = Path(output_dir)
    found = []
    for path in folder.glob("checkpoint-*") if folder.is_dir() else []:
        step = path.name.removeprefix("checkpoint-")
        if step.isdigit() and _complete_checkpoint(path):
            found.append((int(step), path))
    return str(max(found)[1]) if found else None


def _complete_checkpoint(path: Path) -> bool:
    try:
        return isinstance(json.loads((path / "trainer_state.json").read_text("utf-8")), dict)
    except (OSError, ValueError):
        return False


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
