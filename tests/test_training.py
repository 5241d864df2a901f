"""Distiller training on the tiny random Llama: SFT masks, EOS, resume and the final model; GRPO
logging per reward component with fake reward parts."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from checkpoints import changed_weights
from typer.testing import CliRunner

from lmmixup.errors import LmmixupError
from lmmixup.method.knn_bayes import KnnBayesScorer, ScorerLibrary
from lmmixup.method.prompt import prompt_messages, target_text
from lmmixup.mixture import LexicalEmbedder
from lmmixup.rewards import (
    COMPONENTS,
    RewardSet,
    RewardSettings,
    RewardStats,
    build_reward_set,
    completion_text,
    load_reward_set,
)
from lmmixup.training.examples import IGNORE_INDEX, prompt_ids, sft_example
from lmmixup.training.grpo import GRPOTrainConfig, train_grpo
from lmmixup.training.sft import SFTTrainConfig, build_sft_trainer
from lmmixup.training.steps import StepLog, read_steps
from lmmixup.training.trainer import FINAL_DIR, compact_lm_head_on_cpu

TASKS = ["qa", "tfq", "qa", "paragraph"]


def mixture_record(index: int, split: str) -> dict:
    """A short MIXTURE record in the documented format (members, answer, think, ...)."""
    task = TASKS[index % len(TASKS)]
    answers = {
        "qa": f"Q: What is {index} plus {index}?\nA: It is {2 * index}.",
        "tfq": f"{index} plus {index} equals {2 * index}.\nAnswer: True",
        "paragraph": "Water boils at sea level. It turns into steam. Steam rises.",
    }
    members = [
        {"id": f"r{index}.{m}", "prompt": f"what is {index}+{index}", "completion": f"{2 * index}?"}
        for m in range(2)
    ]
    return {
        "id": f"r{index}",
        "task_type": task,
        "members": members,
        "answer": answers[task],
        "think": "Add the numbers." if index % 2 else None,
        "target_ids": [f"seed{index}"],
        "operators": ["truncate"],
        "cross_topic": False,
        "split": split,
    }


@pytest.fixture(scope="module")
def mixture_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixture")
    for split in ("sft", "grpo_train", "grpo_test"):
        rows = [json.dumps(mixture_record(i, split)) for i in range(8)]
        (folder / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


# ---------------------------------------------------------------------------- SFT rows


def test_sft_example_supervises_exactly_the_target_and_eos(tokenizer, mixture_dir):
    record = mixture_record(1, "sft")
    example = sft_example(record, tokenizer)
    prompt = prompt_ids(tokenizer, prompt_messages(record))
    labels, ids = example["labels"], example["input_ids"]
    assert labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert ids[: len(prompt)] == prompt
    supervised = labels[len(prompt) :]
    assert IGNORE_INDEX not in supervised
    assert supervised[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(supervised[:-1]) == target_text(record)
    assert target_text(record).startswith("<think>\nAdd the numbers.\n</think>")
    # The same text the chat template renders for the full conversation, up to its final EOS.
    conversation = prompt_messages(record) + [{"role": "assistant", "content": target_text(record)}]
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
    assert rendered.startswith(tokenizer.decode(ids))
    assert tokenizer.decode(ids).endswith(f"</answer>{tokenizer.eos_token}")


def test_compact_lm_head_gives_the_same_log_probs(tiny_llama, monkeypatch):
    import torch
    import trl.trainer.utils as trl_utils
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    trl_utils.add_fused_lm_head(model, temperature=1.0, outputs=("log_probs", "entropy"))
    ids = torch.randint(10, 1000, (2, 12))
    labels = ids.clone()
    labels[:, :7] = IGNORE_INDEX

    def fused(switch):
        monkeypatch.setattr(trl_utils, "_use_triton", switch)
        with torch.no_grad():
            return model(input_ids=ids, labels=labels, fused_lm_head=True)

    every_position = fused(lambda device: False)
    compact_lm_head_on_cpu()  # wraps whatever the switch is now: False everywhere
    compact = fused(trl_utils._use_triton)
    assert compact.log_probs.shape == every_position.log_probs.shape
    assert torch.allclose(compact.log_probs, every_position.log_probs, atol=1e-5)
    assert torch.allclose(compact.entropy, every_position.entropy, atol=1e-4)
    assert compact.log_probs[:, :6].abs().sum() == 0  # unlabelled positions are not scored


# ---------------------------------------------------------------------------- SFT runs


def sft_config(tiny_llama, mixture_dir, output_dir, **overrides) -> dict:
    return {
        "model": str(tiny_llama),
        "mixture": str(mixture_dir),
        "output_dir": str(output_dir),
        "batch_size": 2,
        "save_steps": 1,
        **overrides,
    }


@pytest.fixture(scope="module")
def sft_run(tiny_llama, mixture_dir, tmp_path_factory):
    """One SFT step from the CLI with save_steps=1, then the same command with --max-steps 2."""
    from lmmixup.cli.commands.train import train_app

    out = tmp_path_factory.mktemp("sft") / "run"
    config = out.parent / "sft.yaml"
    config.write_text(yaml.safe_dump({"sft": sft_config(tiny_llama, mixture_dir, out)}))
    runner = CliRunner()
    first = runner.invoke(train_app, ["sft", "-c", str(config), "--max-steps", "1"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(train_app, ["sft", "-c", str(config), "--max-steps", "2"])
    assert second.exit_code == 0, second.output
    return out, first.output, second.output


def test_sft_collated_batch_masks_prompt_and_ends_on_eos(tiny_llama, mixture_dir, tmp_path):
    cfg = SFTTrainConfig(**sft_config(tiny_llama, mixture_dir, tmp_path, max_steps=1))
    trainer, tokenizer, rows = build_sft_trainer(cfg)
    assert len(rows.rows) == 8 and rows.too_long == 0
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    for ids, labels, mask in zip(
        batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True
    ):
        real = int(mask.sum())
        supervised = (labels != IGNORE_INDEX).nonzero().flatten()
        assert supervised[-1] == real - 1  # the last real token is supervised ...
        assert ids[real - 1] == tokenizer.eos_token_id  # ... and it is EOS
        assert (labels[real:] == IGNORE_INDEX).all()  # padding is not supervised
        first = int(supervised[0])
        assert (labels[:first] == IGNORE_INDEX).all()  # nothing before the target
        assert tokenizer.decode(ids[first : real - 1]).startswith(("<think>", "<answer>"))
        assert tokenizer.decode(ids[:first]).endswith("<|im_start|>assistant\n")


def test_sft_batches_group_sequences_of_similar_length(tiny_llama, mixture_dir, tmp_path):
    from transformers.trainer_pt_utils import LengthGroupedSampler

    settings = sft_config(tiny_llama, mixture_dir, tmp_path, max_steps=1)
    grouped, _, rows = build_sft_trainer(SFTTrainConfig(**settings))
    sampler = grouped._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler)
    assert sorted(sampler) == list(range(len(rows.rows)))  # every row, once
    shuffled, _, _ = build_sft_trainer(SFTTrainConfig(**settings, group_by_length=False))
    assert not isinstance(shuffled._get_train_sampler(), LengthGroupedSampler)


def test_a_missing_split_fails_before_the_model_loads(tmp_path):
    cfg = SFTTrainConfig(mixture=str(tmp_path), model=str(tmp_path / "no-such-model"))
    with pytest.raises(LmmixupError, match=r"sft.jsonl does not exist"):
        build_sft_trainer(cfg)


def test_full_fine_tune_saves_the_trained_weights(tiny_llama, mixture_dir, tmp_path):
    from lmmixup.training.sft import train_sft

    overrides = {"max_steps": 1, "lora": {"enabled": False}, "warmup_ratio": 0.0}
    cfg = SFTTrainConfig(**sft_config(tiny_llama, mixture_dir, tmp_path, **overrides))
    assert train_sft(cfg)["global_step"] == 1
    assert changed_weights(tiny_llama, tmp_path / FINAL_DIR)


def test_sft_resumes_from_the_checkpoint(sft_run):
    out, first_output, second_output = sft_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 2
    assert summary["resumed_from"].endswith("checkpoint-1")
    assert "step 1;" in first_output and "resumed from" in second_output
    steps = [line["step"] for line in read_steps(out) if "loss" in line]
    assert steps == [1, 2]  # step 1 not redone, no step 3


def test_sft_loss_is_finite_and_final_model_generates(sft_run):
    from lmmixup.backends.base import GenParams
    from lmmixup.backends.hf import HFChatModel

    out = sft_run[0]
    losses = [line["loss"] for line in read_steps(out) if "loss" in line]
    assert losses and all(math.isfinite(loss) for loss in losses)
    assert all(line["step_seconds"] > 0 for line in read_steps(out) if "loss" in line)
    final = out / FINAL_DIR
    assert (final / "chat_template.jinja").exists() or "chat_template" in (
        final / "tokenizer_config.json"
    ).read_text()
    assert not (final / "adapter_config.json").exists()  # LoRA merged into plain weights
    model = HFChatModel(str(final))
    reply = model.generate([prompt_messages(mixture_record(0, "sft"))], GenParams(max_new_tokens=4))
    assert reply[0].ok and reply[0].completion_tokens > 0


def test_step_log_resumes_cleanly_and_times_the_parts(tmp_path):
    path = tmp_path / "steps.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.9}\n{"step": 3, "lo')
    spent = [5.0]
    log = StepLog(path, {"reward": lambda: spent[0]})
    state = SimpleNamespace(global_step=2, epoch=0.5)
    log.on_train_begin(None, state, None)  # resumed at step 2: step 3 and the cut line go
    log.on_step_begin(None, state, None)
    spent[0] += 0.25
    state.global_step = 3
    log.on_step_end(None, state, None)
    log.on_log(None, state, None, logs={"loss": 0.8})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert lines[-1]["reward_seconds"] == 0.25 and lines[-1]["loss"] == 0.8
    assert lines[-1]["reward_fraction"] == pytest.approx(0.25 / lines[-1]["step_seconds"])


# ---------------------------------------------------------------------------- GRPO


@pytest.fixture(scope="module")
def fake_rewards():
    """The three reward components on a one-class library (every answer scores 5) and lexical vectors."""
    embedder = LexicalEmbedder(dim=64)
    vectors = np.random.default_rng(0).normal(size=(10, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    library = ScorerLibrary({"default": KnnBayesScorer.fit(vectors, np.full(10, 5))})
    settings = RewardSettings(weights=[0.5, 0.4, 0.1])
    return build_reward_set(settings, library, embedder, embedder, RewardStats())


def tiny_grpo_config(model: Path, mixture: Path, output_dir: Path, **overrides) -> GRPOTrainConfig:
    """Two steps of 2 prompts x 2 completions of 8 tokens: a GRPO run a test can afford."""
    settings = dict(max_steps=2, num_generations=2, prompts_per_step=2, max_completion_length=8)
    return GRPOTrainConfig(
        model=str(model), mixture=str(mixture), output_dir=str(output_dir), **settings | overrides
    )


def test_grpo_logs_each_reward_component_per_step(tiny_llama, mixture_dir, tmp_path, fake_rewards):
    from lmmixup.backends.hf import HFChatModel

    cfg = tiny_grpo_config(tiny_llama, mixture_dir, tmp_path, save_steps=1)
    summary = train_grpo(cfg, fake_rewards)
    assert summary["global_step"] == 2
    steps = [line for line in read_steps(tmp_path) if "reward" in line]
    assert [line["step"] for line in steps] == [1, 2]
    for line in steps:
        for name in COMPONENTS:
            assert math.isfinite(line[f"rewards/{name}_reward/mean"])
            assert math.isfinite(line[f"rewards/{name}_reward/std"])
        assert 0 < line["reward_seconds"] < line["step_seconds"]
        assert 0 < line["reward_fraction"] < 1
    assert fake_rewards.stats.component("format").calls >= 2
    assert HFChatModel(str(tmp_path / FINAL_DIR)).tokenizer.eos_token == "<|im_end|>"


def length_rewards() -> RewardSet:
    """Every component scores the completion's length: it varies within a group, so the
    advantages are not all 0 and a step has a gradient."""

    def length(completions, **_):
        return [len(completion_text(c)) / 100 for c in completions]

    return RewardSet(
        {name: length for name in COMPONENTS}, dict.fromkeys(COMPONENTS, 1.0), RewardStats()
    )


def test_grpo_micro_batches_give_the_same_step(tiny_llama, mixture_dir, tmp_path):
    """Splitting a step's completions into micro-batches changes the memory, not the update."""
    rewards = length_rewards()
    logs = {}
    for micro_batches in (1, 2):
        cfg = tiny_grpo_config(
            tiny_llama,
            mixture_dir,
            tmp_path / str(micro_batches),
            max_steps=1,
            micro_batches=micro_batches,
            lora={"dropout": 0.0},
        )
        train_grpo(cfg, rewards)
        logs[micro_batches] = next(line for line in read_steps(cfg.output_dir) if "loss" in line)
    assert logs[1]["grad_norm"] > 0
    # Summing the micro-batch gradients reorders float additions: CI measured a 2.2e-4
    # relative difference in grad_norm; a wrong loss scale would be a factor of 2.
    for key in ("grad_norm", "loss", "reward"):
        assert logs[2][key] == pytest.approx(logs[1][key], rel=1e-3, abs=1e-7), key
    with pytest.raises(ValueError, match="must divide"):
        GRPOTrainConfig(prompts_per_step=2, num_generations=3, micro_batches=4)


def test_grpo_full_fine_tune_trains_against_a_reference_model(tiny_llama, mixture_dir, tmp_path):
    """Without LoRA (the CPU recipe's GRPO) the KL term needs a separate frozen reference
    model: the step logs a KL and the saved weights are the trained ones."""
    cfg = tiny_grpo_config(
        tiny_llama, mixture_dir, tmp_path, learning_rate=1e-3, beta=0.01, lora={"enabled": False}
    )
    assert train_grpo(cfg, length_rewards())["global_step"] == 2
    steps = [line for line in read_steps(tmp_path) if "loss" in line]
    assert [line["step"] for line in steps] == [1, 2]
    assert all(math.isfinite(line["kl"]) for line in steps) and steps[-1]["kl"] > 0
    assert changed_weights(tiny_llama, tmp_path / FINAL_DIR)


def test_grpo_without_a_quality_library_is_a_clear_error(tmp_path):
    with pytest.raises(LmmixupError, match="rewards build-library"):
        load_reward_set(RewardSettings(), require_quality=True)
    with pytest.raises(LmmixupError, match="build-library"):
        load_reward_set(RewardSettings(quality_library=str(tmp_path)), require_quality=True)


def test_the_recipe_sections_configure_the_single_commands():
    """`lmmixup train sft/grpo -c RECIPE` read the `sft:`/`grpo:` sections of the recipe that
    `lmmixup train distiller --show-config` prints."""
    from importlib import resources

    from lmmixup.cli.options import load_section

    with resources.as_file(resources.files("lmmixup") / "configs" / "distiller.yaml") as recipe:
        assert load_section(SFTTrainConfig, recipe, "sft", ["max_steps=2"]).max_steps == 2
        grpo = load_section(GRPOTrainConfig, recipe, "grpo", [])
    assert grpo.rewards.quality_mode == "continuous" and not grpo.lora.enabled
