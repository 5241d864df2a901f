"""`lmmixup train distiller`: the recipe as one resumable run. The bundled config is the recipe;
a tiny run (random 2-layer Llama, a scripted judge) goes through every stage, is killed in the
middle of SFT, continues from SFT's checkpoint when re-run, and is skipped when run again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fake_openai_server import GOOD_JSON, FakeOpenAIServer, ok
from typer.testing import CliRunner

from lmmixup.cli.app import app
from lmmixup.config import load_config
from lmmixup.errors import ConfigError, StageMismatchError
from lmmixup.mixture import MixtureConfig
from lmmixup.training.steps import read_steps
from lmmixup.workflows.distiller import STAGE_NAMES, run_distiller
from lmmixup.workflows.distiller_config import bundled_config, load_distiller_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SFT_STEPS = 4


class Judge(FakeOpenAIServer):
    """Every rating request gets the same valid rating."""

    def next_reply(self, content: str):
        return ok(GOOD_JSON)


@pytest.fixture(scope="module")
def judge():
    with Judge() as server:
        yield server


def tiny_recipe(model: Path, judge: FakeOpenAIServer) -> dict:
    """The recipe shrunk to seconds: a few short GSM8K seeds, the tiny model, a scripted judge."""
    server_judge = {"backend": "openai", "base_url": judge.base_url, "model": "judge"}
    return {
        "mixture": {
            "seeds": [{"path": "gsm8k", "sample": 16}],
            "embedder": "lexical",
            "max_examples": 12,
            "sft_fraction": 0.5,
            "grpo_test_fraction": 0.25,
        },
        "pool": {"sources": [{"path": "gsm8k"}], "sample": 8},
        "rate": {"judge": server_judge, "propagate": None},
        "sft": {"model": str(model), "max_steps": SFT_STEPS, "save_steps": 1, "batch_size": 1},
        "grpo": {
            "max_steps": 1,
            "num_generations": 2,
            "prompts_per_step": 1,
            "max_completion_length": 8,
            "micro_batches": 1,
        },
        "eval": {
            "limit": 1,
            "max_new_tokens": 16,
            "batch_size": 1,
            "judge": server_judge,
            "judge_mode": "generate",
        },
    }


# ---------------------------------------------------------------------------- config


def test_the_bundled_config_is_the_cpu_recipe():
    cfg = load_distiller_config(None, [])
    assert cfg.mixture == load_config(MixtureConfig, EXAMPLES / "mixture_small.yaml")
    assert [s.path for s in cfg.pool.sources] == ["gsm8k", "sharegpt"]
    assert (cfg.pool.sample, cfg.pool.seed, cfg.pool.max_completion_chars) == (60, 7, 600)
    assert cfg.rate.propagate == 0.5 and cfg.rate.mode == "logprob"
    assert cfg.sft.max_steps == 48 and not cfg.sft.lora.enabled and cfg.sft.learning_rate == 1e-4
    assert cfg.grpo.max_steps == 8 and cfg.grpo.micro_batches == 2 and not cfg.grpo.lora.enabled
    assert cfg.grpo.rewards.quality_mode == cfg.grpo.rewards.alignment_mode == "continuous"
    assert cfg.eval.models == ["base", "sft", "grpo"] and cfg.eval.rewards is None
    assert (cfg.eval.max_new_tokens, cfg.eval.judge_mode) == (320, "logprob")


def test_every_recipe_field_is_documented():
    from lmmixup.workflows.distiller_config import DistillerRunConfig

    def walk(model):
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"
            if isinstance(info.annotation, type) and hasattr(info.annotation, "model_fields"):
                walk(info.annotation)

    walk(DistillerRunConfig)


def test_a_file_changes_only_its_keys_and_may_not_set_the_runs_paths(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({"sft": {"max_steps": 5}, "mixture": {"max_size": 4}}))
    cfg = load_distiller_config(mine, ["grpo.max_steps=2"])
    assert (cfg.sft.max_steps, cfg.sft.batch_size, cfg.grpo.max_steps) == (5, 4, 2)
    assert cfg.mixture.max_size == 4 and cfg.mixture.cot is False
    mine.write_text(yaml.safe_dump({"sft": {"output_dir": "x"}, "grpo": {"model": "y"}}))
    with pytest.raises(ConfigError) as caught:
        load_distiller_config(mine, ["grpo.rewards.quality_library=lib"])
    message = str(caught.value)
    for key in ("sft.output_dir", "grpo.model", "grpo.rewards.quality_library"):
        assert f"{mine}: {key}: set by the run" in message
    with pytest.raises(ConfigError, match="pool.sources.0..path: nope.jsonl does not exist"):
        load_distiller_config(None, ["pool.sources=[{path: nope.jsonl}]"])


def test_the_command_shows_its_help_and_the_bundled_recipe():
    runner = CliRunner()
    result = runner.invoke(app, ["train", "distiller", "--help"])
    assert result.exit_code == 0 and "--run-dir" in result.output and "grpo/final" in result.output
    shown = runner.invoke(app, ["train", "distiller", "--show-config"])
    assert shown.exit_code == 0 and yaml.safe_load(shown.output) == bundled_config()


# ---------------------------------------------------------------------------- the run


def _command(config: Path, run_dir: Path) -> tuple[list[str], dict]:
    env = {**os.environ, "OPENAI_API_KEY": "sk-none"}
    return [
        sys.executable,
        "-m",
        "lmmixup.cli",
        "-q",
        "train",
        "distiller",
        str(config),
        "-d",
        str(run_dir),
    ], env


def _kill_at_first_checkpoint(proc: subprocess.Popen, sft: Path) -> None:
    """SIGKILL the run once SFT has saved a whole checkpoint (its trainer_state.json is last)."""
    deadline = time.time() + 300  # generous: a loaded machine starts the CLI slowly
    while time.time() < deadline and proc.poll() is None:
        if list(sft.glob("checkpoint-*/trainer_state.json")):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _manifest(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / stage / "manifest.json").read_text())


def test_killed_mid_sft_the_run_continues_from_the_checkpoint_and_then_skips(
    tmp_path, tiny_llama, judge
):
    config, run_dir = tmp_path / "recipe.yaml", tmp_path / "run"
    config.write_text(yaml.safe_dump(tiny_recipe(tiny_llama, judge)))
    cmd, env = _command(config, run_dir)
    _kill_at_first_checkpoint(subprocess.Popen(cmd, env=env), run_dir / "sft")
    assert _manifest(run_dir, "sft")["status"] == "running"
    assert not (run_dir / "sft" / "final").exists() and not (run_dir / "grpo").exists()

    done = CliRunner().invoke(app, ["-q", "train", "distiller", str(config), "-d", str(run_dir)])
    assert done.exit_code == 0, done.output[-3000:]
    assert f"--model {run_dir / 'grpo' / 'final'}" in done.output
    for stage in STAGE_NAMES:
        manifest = _manifest(run_dir, stage)
        assert manifest["status"] == "complete", stage
        # a killed run records no history entry: sft's one run is the resumed one
        runs = [entry["resumed"] for entry in manifest["history"]]
        assert runs == ([True] if stage == "sft" else [False]), stage
    sft = _manifest(run_dir, "sft")["counts"]
    assert sft["global_step"] == SFT_STEPS and "checkpoint-" in sft["resumed_from"]
    losses = [line["step"] for line in read_steps(run_dir / "sft") if "loss" in line]
    assert losses == list(range(1, SFT_STEPS + 1))  # no step lost or logged twice
    assert (run_dir / "grpo" / "final" / "model.safetensors").is_file()
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert list(results["models"]) == ["base", "sft", "grpo"] and results["records"] == 1
    assert results["models"]["grpo"]["model"] == str(run_dir / "grpo" / "final")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["distiller"] == str(run_dir / "grpo" / "final")
    assert all({"code", "message", "advice"} <= set(w) for w in summary["warnings"])
    report = (run_dir / "report.html").read_text()
    assert "Distiller evaluation" in report and "sft/steps.jsonl" in report

    again = run_distiller(load_distiller_config(config, []), run_dir)
    assert all(stage["skipped"] for stage in again["stages"].values())
    with pytest.raises(StageMismatchError, match="stage 'sft'.*--force"):
        run_distiller(load_distiller_config(config, ["sft.warmup_ratio=0.2"]), run_dir)


def test_a_checkpoint_cut_short_is_passed_over(tmp_path):
    """A kill while the trainer saves leaves a folder without trainer_state.json (written
    last): resuming from it would fail, so the checkpoint before it is used."""
    from lmmixup.training.trainer import last_checkpoint

    assert last_checkpoint(tmp_path / "none") is None
    for step, state in ((2, "{}"), (4, "{}"), (6, None), (8, '{"trunc')):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
