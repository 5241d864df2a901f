"""`lmmixup finetune` on the tiny random Llama: rejects, decontamination, completion-only loss,
resume, and the merged final checkpoint."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from checkpoints import changed_weights
from typer.testing import CliRunner

from lmmixup.errors import LmmixupError
from lmmixup.training.examples import IGNORE_INDEX
from lmmixup.training.finetune import (
    PLAIN_CHAT_TEMPLATE,
    FinetuneConfig,
    build_finetune_trainer,
    ensure_chat_template,
    finetune,
    finetune_example,
    read_training_set,
)
from lmmixup.training.steps import read_steps
from lmmixup.training.trainer import FINAL_DIR

EVAL_QUESTION = (
    "A robe takes 2 bolts of blue fiber and half that much white fiber. "
    "How many bolts in total does it take?"
)


def good_row(index: int) -> dict:
    return {
        "id": f"r{index}",
        "prompt": f"What is {index} plus {index}?",
        "completion": f"{index} plus {index} is {2 * index}.",
        "origin": "original",
    }


def write_lines(path, lines: list) -> None:
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    )


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    """Six good rows, one planted copy of an evaluation question, three bad lines."""
    folder = tmp_path_factory.mktemp("ft-data")
    lines = [
        good_row(0),
        good_row(1),
        '{"prompt": "cut off',  # line 3: invalid JSON
        good_row(2),
        {"prompt": "no completion here"},  # line 5
        {"id": "leak", "prompt": f"Solve this: {EVAL_QUESTION.upper()}", "completion": "3"},
        ["not", "an", "object"],  # line 7
        good_row(3),
        good_row(4),
        good_row(5),
    ]
    write_lines(folder / "train.jsonl", lines)
    write_lines(folder / "gsm8k.jsonl", [{"question": EVAL_QUESTION, "answer": "#### 3"}])
    return folder


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


@pytest.fixture(scope="module")
def finetune_run(tiny_llama, train_file):
    """One step from the CLI with a checkpoint every step, then the same command with --max-steps 2."""
    from lmmixup.cli.commands.finetune import finetune_app

    out = train_file / "run"
    config = train_file / "ft.yaml"
    config.write_text(
        yaml.safe_dump({"finetune": {"batch_size": 2, "save_steps": 1, "warmup_ratio": 0.0}})
    )
    command = [
        "finetune",
        str(train_file / "train.jsonl"),
        "--model",
        str(tiny_llama),
        "-o",
        str(out),
        "-c",
        str(config),
        "--decontaminate-against",
        f"gsm8k={train_file / 'gsm8k.jsonl'}",
    ]
    runner = CliRunner()
    first = runner.invoke(finetune_app, [*command, "--max-steps", "1"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(finetune_app, [*command, "--max-steps", "2"])
    assert second.exit_code == 0, second.output
    return out, first.output, second.output


def test_summary_counts_rows_rejects_and_contamination(finetune_run):
    out, first, second = finetune_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == 6 and summary["too_long"] == 0
    assert summary["rejected"] == 3 and summary["contaminated"] == 1
    report = summary["decontamination"]
    assert report["tasks"]["gsm8k"]["contaminated_rows"] == 1
    assert report["tasks"]["gsm8k"]["example_ids"] == ["leak"]
    assert math.isfinite(summary["loss"]) and summary["seconds"] > 0
    assert summary["config"]["lora"] == {
        "enabled": True,
        "r": 64,
        "alpha": 16,
        "dropout": 0.1,
        "target_modules": "all-linear",
    }
    assert "trained on 6 rows" in second and "1 contaminated" in second


def test_resume_continues_from_the_checkpoint(finetune_run):
    out, first, second = finetune_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 2
    assert summary["resumed_from"].endswith("checkpoint-1")
    assert "step 1," in first and "resumed from" in second
    assert [line["step"] for line in read_steps(out) if "loss" in line] == [1, 2]


def test_bad_lines_and_contaminated_rows_go_to_rejects(finetune_run, train_file):
    rejects = [
        json.loads(line) for line in (finetune_run[0] / "rejects.jsonl").read_text().splitlines()
    ]
    bad = [r for r in rejects if r["reason"] != "contaminated"]
    assert [r["line"] for r in bad] == [3, 5, 7]
    assert all(r["file"] == str(train_file / "train.jsonl") for r in bad)
    assert "invalid JSON" in bad[0]["reason"] and "'completion'" in bad[1]["reason"]
    assert "JSON object" in bad[2]["reason"]
    (leak,) = [r for r in rejects if r["reason"] == "contaminated"]
    assert leak["id"] == "leak" and leak["tasks"] == ["gsm8k"]
    assert leak["ngram"].startswith("a robe takes 2 bolts")


def test_final_model_is_merged_and_differs_from_the_base(finetune_run, tiny_llama):
    from transformers import AutoModelForCausalLM

    final = finetune_run[0] / FINAL_DIR
    assert not (final / "adapter_config.json").exists()  # LoRA merged into plain weights
    AutoModelForCausalLM.from_pretrained(final)  # a plain HF checkpoint
    assert any("q_proj" in name for name in changed_weights(tiny_llama, final))


def test_loss_covers_the_completion_only(tiny_llama, train_file, tokenizer, tmp_path):
    example = finetune_example(good_row(7), tokenizer)
    supervised = [t for t in example["labels"] if t != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == f"7 plus 7 is 14.{tokenizer.eos_token}"
    first = example["labels"].index(supervised[0])
    assert example["labels"][:first] == [IGNORE_INDEX] * first
    assert tokenizer.decode(example["input_ids"][:first]).endswith(
        "<|im_start|>user\nWhat is 7 plus 7?<|im_end|>\n<|im_start|>assistant\n"
    )
    # the batches the trainer builds keep that mask; a row over max_length is left out
    long_row = {"prompt": "long " * 300, "completion": "x"}
    write_lines(tmp_path / "t.jsonl", [good_row(0), good_row(1), long_row])
    cfg = FinetuneConfig(
        train=str(tmp_path / "t.jsonl"),
        model=str(tiny_llama),
        output_dir=str(tmp_path / "out"),
        max_length=128,
        batch_size=2,
    )
    trainer, _, rows, left_out = build_finetune_trainer(cfg)
    assert len(rows.rows) == 2 and rows.too_long == 1 and left_out["rejected"] == 0
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
        kept = ids[labels != IGNORE_INDEX].tolist()
        assert tokenizer.decode(kept).endswith(tokenizer.eos_token)
        assert "What is" not in tokenizer.decode(kept)


def test_a_set_without_usable_rows_is_a_clear_error(tmp_path):
    write_lines(tmp_path / "bad.jsonl", ["{oops", {"prompt": "p", "completion": "  "}])
    cfg = FinetuneConfig(train=str(tmp_path / "bad.jsonl"), output_dir=str(tmp_path / "out"))
    with pytest.raises(LmmixupError, match=r"bad.jsonl: no row left to train on \(2 bad lines"):
        finetune(cfg)
    assert len((tmp_path / "out" / "rejects.jsonl").read_text().splitlines()) == 2
    with pytest.raises(LmmixupError, match="training set not found"):
        read_training_set(tmp_path / "missing.jsonl")


def test_a_tokenizer_without_chat_template_gets_the_plain_one(tokenizer):
    from copy import deepcopy

    plain = deepcopy(tokenizer)
    plain.chat_template = None
    ensure_chat_template(plain)
    assert plain.chat_template == PLAIN_CHAT_TEMPLATE
    example = finetune_example({"prompt": "Hi?", "completion": "Hello."}, plain)
    first = next(i for i, label in enumerate(example["labels"]) if label != IGNORE_INDEX)
    assert plain.decode(example["input_ids"][:first]) == "<|user|>\nHi?\n<|assistant|>\n"
    ensure_chat_template(tokenizer)
    assert tokenizer.chat_template != PLAIN_CHAT_TEMPLATE  # a model's own template is kept
