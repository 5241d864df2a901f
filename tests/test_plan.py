"""`lmmixup plan` / `run --dry-run`: model calls and tokens per stage before a run, and the
run's summary against the plan. Expected numbers are computed from the config, not copied."""

from __future__ import annotations

import json

import pytest

from lmmixup.config import ImportConfig, RunConfig
from lmmixup.io.jsonl import write_records
from lmmixup.method.cluster_sizes import draw_cluster_sizes
from lmmixup.method.rubric import build_rubric_messages
from lmmixup.stages.import_pool import import_pool
from lmmixup.workflows.plan import (
    CHARS_PER_TOKEN,
    JUDGE_REPLY,
    Throughput,
    actual_use,
    against_plan,
    measured_throughput,
    plan_run,
    pool_file_scan,
    scan_pool,
)


def _rows(count: int) -> list[dict]:
    return [
        {"id": f"r{i}", "prompt": f"What is {i} plus {i}?", "completion": f"It is {2 * i}."}
        for i in range(count)
    ]


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "pool.jsonl"
    rows = _rows(60) + [{"id": "r1", "prompt": "dup", "completion": "dup"}]  # a duplicate id
    rows.append({"id": "long", "prompt": "x" * 500, "completion": "filtered by length"})
    write_records(path, rows)
    with path.open("a") as handle:
        handle.write("{not json\n")
    return path


@pytest.mark.parametrize(
    "limits",
    [{}, {"limit": 25}, {"sample": 40, "holdout_fraction": 0.2}, {"holdout_fraction": 0.5}],
)
def test_pool_count_is_what_the_import_keeps(source, tmp_path, limits):
    cfg = ImportConfig(sources=[str(source)], max_prompt_chars=200, **limits)
    result = import_pool(cfg.sources, tmp_path / "imported.jsonl", cfg)
    scan = scan_pool(cfg)
    assert scan.rows == result.kept
    # the sample is of kept rows: no duplicate, no row outside the length filter
    assert {r["id"] for r in scan.sample} <= {r["id"] for r in _rows(60)}
    assert len({r["id"] for r in scan.sample}) == len(scan.sample)


def _server_config(source, **changes) -> RunConfig:
    data = {
        "import": {"sources": [str(source)], "max_prompt_chars": 200},
        "rate": {
            "judge": {"backend": "openai", "model": "judge", "base_url": "http://x/v1"},
            "mode": "generate",
            "propagate": 0.5,
            "attempts": 3,
        },
        "split": {"high_fraction": 0.3},
        "cluster": {"min_size": 2, "max_size": 4, "mean_size": 3, "std_size": 1},
        "distill": {
            "generator": {"backend": "openai", "model": "distiller", "base_url": "http://x/v1"},
            "candidates": 2,
        },
    }
    for key, value in changes.items():
        section, name = key.split("__")
        data[section][name] = value
    return RunConfig.model_validate(data)


def test_server_plan_counts_calls_from_the_config_and_estimates_tokens(source):
    cfg = _server_config(source)
    scan = scan_pool(cfg.import_)
    plan = {s.stage: s for s in plan_run(cfg, scan).stages}
    rows = scan.rows
    judged = round(rows * 0.5)
    rate = plan["rate"]
    assert (rate.calls, rate.calls_max) == (judged, judged * 3)
    assert rate.tokens_counted == f"estimate ({CHARS_PER_TOKEN} chars/token)"
    assert rate.completion_tokens == judged * round(len(JUDGE_REPLY) / CHARS_PER_TOKEN)
    assert rate.completion_tokens_max == judged * 3 * cfg.rate.max_new_tokens
    per_row = [
        round(
            sum(len(m["content"]) for m in build_rubric_messages(r["prompt"], r["completion"]))
            / CHARS_PER_TOKEN
        )
        + 8
        for r in scan.sample
    ]
    assert rate.prompt_tokens == round(sum(per_row) / len(per_row) * judged)
    assert rate.embedded_texts == rows  # propagation embeds the whole pool
    low = rows - round(rows * 0.3)
    clusters = len(draw_cluster_sizes(low, min_size=2, max_size=4, mean_size=3, std_size=1))
    assert plan["cluster"].embedded_texts == low
    assert plan["distill"].calls == clusters * 2  # two candidates per cluster
    assert plan["distill"].completion_tokens_max == clusters * 2 * cfg.distill.max_new_tokens
    assert plan["rerate"].calls == clusters
    assert plan["select"].embedded_texts == rows - low + clusters


def test_time_at_a_given_throughput(source):
    cfg = _server_config(source, rate__propagate=None)
    speed = Throughput(tokens_per_s=100.0, prompt_tokens_per_s=1000.0)
    rate = plan_run(cfg, scan_pool(cfg.import_), {"rate": speed}).stages[1]
    assert rate.seconds == pytest.approx(rate.completion_tokens / 100 + rate.prompt_tokens / 1000)
    assert rate.seconds_max == pytest.approx(
        rate.completion_tokens_max / 100 + rate.prompt_tokens / 1000
    )
    by_requests = plan_run(cfg, scan_pool(cfg.import_), {"rate": Throughput(requests_per_s=4)})
    assert by_requests.stages[1].seconds == pytest.approx(rate.calls / 4)


def test_threshold_split_is_an_assumption_the_plan_states(source):
    cfg = _server_config(source, split__high_fraction=None)
    plan = plan_run(cfg, scan_pool(cfg.import_), low_share=0.8)
    assert plan.stages[2].embedded_texts == round(plan.pool_rows * 0.8)
    assert any("80%" in note for note in plan.assumptions)


def test_local_models_are_counted_with_their_tokenizer(tiny_llama, tmp_path):
    from transformers import AutoTokenizer

    pool = tmp_path / "pool.jsonl"
    write_records(pool, _rows(1))
    judge = {"backend": "hf", "model": str(tiny_llama)}
    cfg = RunConfig.model_validate(
        {"import": {"sources": [str(pool)]}, "rate": {"judge": judge, "mode": "generate"}}
    )
    rate = plan_run(cfg, scan_pool(cfg.import_)).stages[1]
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    rendered = tokenizer.apply_chat_template(
        build_rubric_messages("What is 0 plus 0?", "It is 0."),
        tokenize=False,
        add_generation_prompt=True,
    )
    assert rate.tokens_counted == "tokenizer"
    assert rate.prompt_tokens == len(tokenizer(rendered, add_special_tokens=False)["input_ids"])


def test_summary_sets_actual_use_against_the_plan(source, tmp_path):
    cfg = _server_config(source)
    plan = plan_run(cfg, scan_pool(cfg.import_)).as_dict()
    usage = {"requests": 17, "prompt_tokens": 900, "completion_tokens": 300}
    stages = {
        "rate": {"counts": {"judge_usage": usage}},
        "distill": {"counts": {"written": 5, "rejected": 2}},
        "rerate": {"counts": {"judge": {"written": 3, "rejected": 0}}},
    }
    rows = {row["stage"]: row for row in against_plan(plan, stages)}
    assert rows["rate"]["actual_calls"] == 17 and rows["rate"]["actual_prompt_tokens"] == 900
    assert rows["rate"]["planned_calls"] == plan["stages"][1]["calls"]
    assert rows["distill"]["actual_calls"] == 7
    assert rows["distill"]["actual_completion_tokens"] is None  # not recorded: said so
    assert rows["rerate"]["actual_calls"] == 3  # no usage recorded (hf): records judged
    stages["distill"]["counts"]["distiller_usage"] = {"requests": 8, "completion_tokens": 99}
    rows = {row["stage"]: row for row in against_plan(plan, stages)}
    assert (rows["distill"]["actual_calls"], rows["distill"]["actual_completion_tokens"]) == (8, 99)
    del stages["rerate"]
    assert "rerate" not in {row["stage"] for row in against_plan(plan, stages)}  # not reached


def test_throughput_measured_from_a_pilot_run(tmp_path):
    (tmp_path / "rate").mkdir()
    manifest = {"total_seconds": 20.0, "counts": {"judge_usage": {"requests": 50}}}
    (tmp_path / "rate" / "manifest.json").write_text(json.dumps(manifest))
    measured = measured_throughput(tmp_path)
    assert set(measured) == {"rate"} and measured["rate"].requests_per_s == 2.5


def test_plan_command_and_dry_run(source, tmp_path, monkeypatch, capsys):
    import yaml

    from lmmixup.cli.app import main

    cfg = _server_config(source).model_dump(mode="json", by_alias=True)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr("sys.argv", ["lmmixup", "plan", str(path), "--requests-per-second", "2"])
    main()
    out = capsys.readouterr().out
    rows = scan_pool(RunConfig.model_validate(cfg).import_).rows
    assert f"{rows:,} pool rows" in out and "estimate (4 chars/token)" in out
    assert "2.0 requests/s (given)" in out
    run_dir = tmp_path / "run"
    monkeypatch.setattr("sys.argv", ["lmmixup", "run", str(path), "-d", str(run_dir), "--dry-run"])
    main()
    saved = json.loads((run_dir / "plan.json").read_text())
    assert saved["pool_rows"] == rows
    assert sorted(p.name for p in run_dir.iterdir()) == ["plan.json"]  # no stage ran


def test_pool_file_scan_counts_lines(tmp_path):
    path = tmp_path / "pool.jsonl"
    write_records(path, _rows(30))
    scan = pool_file_scan(path, sample_size=5)
    assert scan.rows == 30 and len(scan.sample) == 5


def test_clusters_rejected_as_incoherent_are_no_distiller_calls():
    counts = {"written": 2, "rejected": 5, "reject_reasons": {"incoherent": 4, "format": 1}}
    assert actual_use("distill", counts)["calls"] == 3
    assert actual_use("distill", {**counts, "reject_reasons": {}})["calls"] == 7


def test_each_candidate_of_a_cluster_is_a_distiller_call():
    counts = {"written": 2, "rejected": 5, "reject_reasons": {"incoherent": 4, "format": 1}}
    assert actual_use("distill", counts, {"candidates": 4})["calls"] == 12
