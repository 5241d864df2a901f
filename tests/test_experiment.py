"""`lmmixup experiment`: every arm selected at the budget, decontaminated, fine-tuned and
evaluated, on a fake judge/distiller server and a tiny model."""

from __future__ import annotations

import json

import pytest
import yaml
from test_pipeline import FakeLabServer, _config, _pool

from lmmixup.errors import LmmixupError
from lmmixup.evalsuite import GSM8K_EVAL_ROWS, gsm8k_rows
from lmmixup.io.jsonl import read_records, write_records
from lmmixup.workflows.experiment import arm_slug, load_experiment_config, parse_arm, run_experiment

ARMS = ["random", "full", "low-only", "high-low-5:5", "mixup-5:5"]
BUDGET = 8


@pytest.fixture
def lab():
    with FakeLabServer() as server:
        yield server


def _experiment_yaml(tmp_path, lab, tiny_llama) -> tuple:
    rows = _pool(tmp_path / "pool.jsonl")
    leaked = gsm8k_rows([GSM8K_EVAL_ROWS.start])[0]
    planted = {"id": "leak", "prompt": leaked["question"], "completion": leaked["answer"]}
    write_records(tmp_path / "pool.jsonl", [*rows, {**planted, "source": "alpha"}])
    data = json.loads(_config(tmp_path, lab.base_url, tmp_path / "pool.jsonl").read_text())
    data["import"]["holdout_fraction"] = 0.15
    data["select"]["budget"] = BUDGET
    data["split"] = {"high_fraction": 0.4}  # the high/low arms must follow the split's bands
    data["experiment"] = {
        "base_model": str(tiny_llama),
        "arms": ARMS,
        "finetune": {"max_steps": 1, "batch_size": 2, "max_length": 256},
        "eval": {
            "tasks": ["lmmixup_gsm8k", "lmmixup_gsm8k_mc", "lmmixup_heldout"],
            "limit": 2,
            "max_gen_toks": 4,
            "num_fewshot": 1,
        },
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, planted


def test_every_arm_trains_on_the_budget_and_the_table_has_every_arm(
    tmp_path, lab, tiny_llama, monkeypatch
):
    monkeypatch.setenv("LMMIXUP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-none")
    path, planted = _experiment_yaml(tmp_path, lab, tiny_llama)
    cfg, exp = load_experiment_config(path, [])
    run = tmp_path / "run"
    table = run_experiment(cfg, exp, run)

    assert [row["arm"] for row in table["rows"]] == [*ARMS, "base"]
    assert set(table["tasks"]) == {"lmmixup_gsm8k", "lmmixup_gsm8k_mc", "lmmixup_heldout"}
    heldout = read_records(run / "import" / "pool.heldout.jsonl")
    pool_size = 37 - len(heldout)
    for row in table["rows"]:
        assert set(row["values"]) == set(table["tasks"]) and row["average"] is not None
        expected = {"full": pool_size - 1, "base": 0}.get(row["arm"], BUDGET)
        assert row["train_rows"] == expected, row["arm"]
    for arm in ARMS:
        train = read_records(run / f"arm-{arm_slug(arm)}" / "train.jsonl")
        assert all(r["id"] != planted["id"] for r in train)
        assert not {r["id"] for r in train} & {r["id"] for r in heldout}
        model = run / f"arm-{arm_slug(arm)}" / "model"
        assert (model / "steps.jsonl").exists()  # weights deleted once evaluated, the log kept
        assert not (model / "final").exists() and not list(model.glob("checkpoint-*"))
    assert planted["id"] not in {r["id"] for r in heldout}  # seed 0 keeps it in the pool
    dropped = read_records(run / "decontaminate" / "rejects.jsonl")
    assert {r["id"] for r in dropped} == {planted["id"]}
    split_high = {r["id"] for r in read_records(run / "split" / "high.jsonl")}
    low_arm = {r["id"] for r in read_records(run / "arm-low-only" / "train.jsonl")}
    assert not low_arm & split_high
    high_low = {r["id"] for r in read_records(run / "arm-high-low-5to5" / "train.jsonl")}
    assert len(high_low & split_high) == BUDGET // 2
    origins = read_records(run / "arm-mixup-5to5" / "train.jsonl")
    assert {r["origin"] for r in origins} == {"distilled", "original"}
    assert (run / "experiment" / "results.md").read_text().count("\n| ") == len(ARMS) + 1
    assert "mixup-5:5" in (run / "report.html").read_text()  # the report shows the table

    requests = lab.count
    again = run_experiment(cfg, exp, run)  # every stage done: nothing is asked or trained again
    assert again == table and lab.count == requests

    # An arm whose band cannot fill the budget stops the run before any arm trains.
    too_big = cfg.model_copy(
        update={"select": cfg.select.model_copy(update={"budget": len(split_high) + 1})}
    )
    random_manifest = (run / "arm-random" / "manifest.json").read_text()
    high_only = exp.model_copy(update={"arms": ["random", "high-only"]})
    with pytest.raises(LmmixupError, match="arm high-only cannot fill the budget"):
        run_experiment(too_big, high_only, run, force=True)
    assert (run / "arm-random" / "manifest.json").read_text() == random_manifest
    assert not (run / "arm-high-only").exists() and not list(run.glob(".check-*"))


def test_bad_arms_and_missing_holdout_fail_before_any_work(tmp_path):
    with pytest.raises(LmmixupError, match="unknown arm"):
        parse_arm("everything")
    assert parse_arm("mixup-3:7") == ("mixup", 0.3) and parse_arm("high-low-5:5")[1] == 0.5
    config = tmp_path / "exp.yaml"
    experiment = {"eval": {"tasks": ["lmmixup_heldout"]}}
    config.write_text(yaml.safe_dump({"experiment": experiment}))
    with pytest.raises(LmmixupError, match="import.sources: empty"):
        load_experiment_config(config, [])
    config.write_text(yaml.safe_dump({"import": {"sources": ["gsm8k"]}, "experiment": experiment}))
    cfg, exp = load_experiment_config(config, [])
    bad = exp.model_copy(update={"finetune": {"epochz": 1}})
    with pytest.raises(LmmixupError, match="experiment.finetune.*epochz"):
        run_experiment(cfg, bad, tmp_path / "run")
    with pytest.raises(LmmixupError, match="holdout_fraction"):
        run_experiment(cfg, exp, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_bundled_experiment_config_is_valid():
    cfg, exp = load_experiment_config(None, ["experiment.arms=[random, mixup-3:7]"])
    assert cfg.import_.holdout_fraction > 0 and cfg.select.budget == 24
    assert exp.arms == ["random", "mixup-3:7"] and exp.finetune["epochs"] == 1
