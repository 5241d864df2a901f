"""The run's warnings (`lmmixup.workflows.health`): each one on a small synthetic run directory,
none on a healthy one, and where the user sees them: `lmmixup run`'s console (with -q too),
summary.json and the top of the report."""

from __future__ import annotations

import json
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console
from test_report import make_run

from lmmixup.cli.commands.run import print_warnings, run_warnings
from lmmixup.io.jsonl import write_records
from lmmixup.report import build_report
from lmmixup.runtime.runner import run_stage
from lmmixup.workflows import health
from lmmixup.workflows.health import TRAIN_DISTILLER, check_run, failed_checks

SOURCES = ("alpha", "beta")


def _stage(run_dir: Path, name: str, files: dict, counts: dict, config: dict) -> None:
    """One stage folder written by the real stage runner, with its config and counts."""

    def body(stage) -> None:
        for file_name, records in files.items():
            write_records(stage.file(file_name), records)
        stage.counts.update(counts)

    run_stage(run_dir, name, inputs=[], config=config, body=body)


def _rating(score: int) -> dict:
    return {"overall": 2 * score, "score": score, "rater": "fake", "method": "judge"}


def build(
    run_dir: Path,
    *,
    scores: list[int] | None = None,
    sources: list[str] | None = None,
    task_types: list[str | None] | None = None,
    split: dict | None = None,
    clusters: int = 10,
    distilled: int = 8,
    reject_reasons: dict | None = None,
    checks: list[dict | None] | None = None,
    rejects: list[dict] | None = None,
    train_sources: list[str] | None = None,
    train_distilled: int = 3,
    select_counts: dict | None = None,
    select_config: dict | None = None,
    why: list[dict] | None = None,
    agreement: dict | None = None,
) -> Path:
    """A finished run whose every stage is healthy unless an argument says otherwise:
    40 pool records half alpha half beta, scores spread over 0-5, split at score >= 4,
    8 of 10 clusters distilled, a 10-row training set of 3 distilled and 7 originals."""
    scores = scores if scores is not None else [i % 6 for i in range(40)]
    sources = sources or [SOURCES[i % 2] for i in range(len(scores))]
    pool = [
        {"id": f"p{i}", "prompt": f"Question {i}", "completion": f"Answer {i}", "source": source}
        for i, source in enumerate(sources)
    ]
    for record, task_type in zip(pool, task_types or [], strict=False):
        if task_type is not None:
            record["task_type"] = task_type
    _stage(run_dir, "import", {"pool.jsonl": pool}, {"kept": len(pool)}, {"import_": {}})
    rated = [{**r, "rating": _rating(s)} for r, s in zip(pool, scores, strict=True)]
    rate_counts = {"rated": len(rated), "failed": 0}
    if agreement:
        rate_counts["agreement"] = agreement
    _stage(run_dir, "rate", {"rated.jsonl": rated}, rate_counts, {"rate": {}})
    split = split or {"threshold": 4, "high_fraction": None}
    if split.get("high_fraction"):
        ranked = sorted(rated, key=lambda r: -r["rating"]["score"])
        high = ranked[: round(len(ranked) * split["high_fraction"])]
    else:
        high = [r for r in rated if r["rating"]["score"] >= split["threshold"]]
    low = [r for r in rated if r not in high]
    split_files = {"high.jsonl": high, "low.jsonl": low}
    _stage(run_dir, "split", split_files, {"high": len(high)}, {"split": split})
    cluster_rows = [
        {"cluster_id": f"c{k:06d}", "source": SOURCES[k % 2], "member_ids": [f"p{k}"]}
        for k in range(clusters)
    ]
    _stage(
        run_dir,
        "cluster",
        {"clusters.jsonl": cluster_rows},
        {"clusters": clusters},
        {"cluster": {}},
    )
    checks = checks if checks is not None else [{"flags": [], "copy_overlap": 0.2}] * distilled
    pairs = [
        {
            "id": f"mix-c{k:06d}",
            "prompt": "merged",
            "completion": "merged",
            "source": SOURCES[k % 2],
            **({"checks": checks[k]} if checks[k] is not None else {}),
        }
        for k in range(distilled)
    ]
    reasons = reject_reasons or {"format": clusters - distilled}
    _stage(
        run_dir,
        "distill",
        {"distilled.jsonl": pairs, "rejects.jsonl": rejects or []},
        {"distilled": distilled, "reject_reasons": reasons},
        {"distill": {}},
    )
    train_sources = train_sources or [SOURCES[i % 2] for i in range(10)]
    train = [
        {
            "id": pairs[i]["id"] if i < train_distilled else f"p{i}",
            "source": source,
            "origin": "distilled" if i < train_distilled else "original",
        }
        for i, source in enumerate(train_sources)
    ]
    rows = len(train)
    select_counts = select_counts or {
        "requested": {"distilled": train_distilled, "original": rows - train_distilled},
        "selected": {"distilled": train_distilled, "original": rows - train_distilled},
        "filled_shortfall": {"distilled": 0, "original": 0},
    }
    why = why if why is not None else [{"id": r["id"], "origin": r["origin"]} for r in train]
    _stage(
        run_dir,
        "select",
        {"train.jsonl": train, "train.why.jsonl": why},
        select_counts,
        {"select": select_config or {"budget": rows, "mixup_ratio": 0.3}},
    )
    return run_dir


def codes(run_dir: Path) -> list[str]:
    return [warning.code for warning in check_run(run_dir)]


def only(run_dir: Path, code: str) -> health.RunWarning:
    found = check_run(run_dir)
    assert [w.code for w in found] == [code], found
    return found[0]


def test_a_healthy_run_has_no_warnings(tmp_path):
    assert check_run(build(tmp_path / "run")) == []
    assert check_run(make_run(tmp_path / "report-run")) == []  # the report tests' full run
    assert check_run(tmp_path / "nothing-here") == []  # no stage: nothing to check


def test_a_judge_that_bunches_its_scores_is_named(tmp_path):
    bunched = [2] * 28 + [3] * 6 + [4] * 3 + [5] * 3  # 34 of 40 (85%) in scores 2 and 3
    warning = only(build(tmp_path / "a", scores=bunched), "judge_no_separation")
    assert "34 of 40 rated records (85%)" in warning.message
    assert "score 2: 28, score 3: 6" in warning.message
    assert "stronger judge" in warning.advice and "rate.propagate" in warning.advice
    spread = [2] * 24 + [3] * 7 + [4] * 5 + [5] * 4  # 31 of 40 (78%): below the bar
    assert codes(build(tmp_path / "b", scores=spread)) == []
    assert "judge_no_separation" not in codes(build(tmp_path / "c", scores=[4] * 9))  # too few


def test_propagated_scores_no_better_than_the_majority_are_said(tmp_path):
    agreement = {"exact": 0.6, "majority_class_baseline": 0.65}
    scores = [2] * 20 + [4] * 20
    warning = only(build(tmp_path / "a", scores=scores, agreement=agreement), "judge_no_separation")
    assert "60% of the time" in warning.message and "(65%)" in warning.message
    better = {"exact": 0.9, "majority_class_baseline": 0.65}
    warning = only(build(tmp_path / "b", scores=scores, agreement=better), "judge_no_separation")
    assert "of the time" not in warning.message


def test_nothing_reaching_the_bar_is_named_with_what_split_did(tmp_path):
    scores = [i % 4 for i in range(40)]  # 0-3: nothing reaches 4
    warning = only(build(tmp_path / "a", scores=scores), "nothing_high")
    assert "none of 40 rated records scored >= 4 of 0-5 (best: 3)" in warning.message
    assert "the high file is empty" in warning.message
    assert "split.high_fraction takes a top share instead" in warning.advice
    lowered = {"threshold": 4, "high_fraction": 0.3}
    warning = only(build(tmp_path / "b", scores=scores, split=lowered), "nothing_high")
    assert "split took the top 30% (12 records) as high instead" in warning.message


def test_a_lowered_high_bar_counts_the_rows_below_it(tmp_path):
    half = {"threshold": 4, "high_fraction": 0.5}  # 12 of 40 reach 4: 8 of the top 20 do not
    warning = only(build(tmp_path / "a", split=half), "high_bar_lowered")
    assert "top 50% as high (20 records), 8 of them scored below the bar" in warning.message
    assert "split.high_fraction" in warning.advice
    raised = {"threshold": 4, "high_fraction": 0.25}  # the top 10 all reach the bar
    assert codes(build(tmp_path / "b", split=raised)) == []


def test_a_low_distill_yield_names_the_top_reject_reasons(tmp_path):
    reasons = {"truncated": 4, "format": 2, "drift": 1}
    run = build(tmp_path / "a", clusters=10, distilled=3, reject_reasons=reasons)
    warning = only(run, "low_distill_yield")
    assert "3 of 10 clusters (30%) became a distilled pair" in warning.message
    assert "truncated 4, format 2, drift 1" in warning.message
    assert TRAIN_DISTILLER in warning.advice and "max_new_tokens" in warning.advice
    run = build(tmp_path / "b", clusters=10, distilled=5, train_distilled=3)
    assert codes(run) == []  # half is enough


def test_few_faithful_pairs_are_counted_with_those_in_the_set(tmp_path):
    bad = {"flags": ["answer_mismatch"], "copy_overlap": 0.2}
    failing_value = {"flags": [], "answer_agrees": False}
    good = {"flags": [], "answer_agrees": True}
    checks = [bad, failing_value, bad, bad, bad, good, good, good]  # 3 of 8 pass
    warning = only(build(tmp_path / "a", checks=checks), "low_faithful_share")
    assert "3 of 8 complete pairs the distiller wrote (38%) pass every" in warning.message
    assert "(failed: answer_mismatch 4, answer_agrees 1)" in warning.message
    assert "3 failing pairs are in the training set" in warning.message  # the set's first 3
    assert codes(build(tmp_path / "b", checks=[None] * 8)) == []  # no checks: not judged
    assert codes(build(tmp_path / "c", checks=[*[bad] * 4, *[good] * 4])) == []  # half pass


def _reject(k: int, *flags: str) -> dict:
    checks = {"flags": list(flags), "coverage": 0.1}
    return {"id": f"mix-r{k}", "reason": flags[0], "raw": {"id": f"mix-r{k}", "checks": checks}}


def test_pairs_rejected_by_a_check_count_but_replies_without_a_pair_do_not(tmp_path):
    rejects = [
        _reject(1, "answer_mismatch", "placeholder"),
        _reject(2, "answer_mismatch"),
        _reject(3, "empty"),  # no pair could be read: the yield's business
        _reject(4, "truncated", "empty"),
        {"id": "mix-r5", "reason": "incoherent", "raw": {"id": "mix-r5"}},
    ]
    good = {"flags": [], "coverage": 0.6}
    checks = [good, *[{"flags": ["low_coverage"]}] * 3]
    run = build(tmp_path / "a", clusters=8, distilled=4, checks=checks, rejects=rejects)
    warning = only(run, "low_faithful_share")
    assert warning.message == (
        "few faithful pairs: 1 of 6 complete pairs the distiller wrote (17%) pass every "
        "verifier check (failed: low_coverage 3, answer_mismatch 2, placeholder 1); "
        "2 failing pairs are in the training set"
    )
    assert "distill.candidates" in warning.advice


def test_failed_checks_reads_flags_and_false_values():
    assert failed_checks(None) is None
    assert failed_checks({"flags": [], "coverage": 0.4, "answer_agrees": True}) == []
    assert failed_checks({"flags": ["placeholder"], "no_new_numbers": False}) == [
        "placeholder",
        "no_new_numbers",
    ]


def test_a_source_that_fell_out_of_the_set_is_named_with_its_shares(tmp_path):
    sources = ["sharegpt"] * 80 + ["gsm8k"] * 40
    train = ["sharegpt"] * 29 + ["gsm8k"]
    run = build(
        tmp_path / "a", scores=[i % 6 for i in range(120)], sources=sources, train_sources=train
    )
    warning = only(run, "mix_shift")
    assert warning.message == (
        "the training set's mix of sources moved far from the pool's: "
        "gsm8k 33% of the pool (40 of 120), 3% of the set (1 of 30)"
    )


def test_mix_shift_leaves_small_shares_and_tiny_sets_alone_and_sees_a_rise(tmp_path):
    rare = ["alpha"] * 38 + ["beta"] * 2  # beta 5%: checked, but 10 rows expect 0.5 of it
    assert codes(build(tmp_path / "a", sources=rare, train_sources=["alpha"] * 10)) == []
    rose = build(tmp_path / "b", sources=rare, train_sources=["alpha"] * 6 + ["beta"] * 4)
    assert (
        "beta 5% of the pool (2 of 40), 40% of the set (4 of 10)" in only(rose, "mix_shift").message
    )


def _set_of_qa_rows(run: Path) -> Path:
    """Replace the training set by 10 rows of task type qa (3 distilled)."""
    rows = [
        {
            "id": f"mix-c{i:06d}" if i < 3 else f"p{i}",
            "source": SOURCES[i % 2],
            "origin": "distilled" if i < 3 else "original",
            "task_type": "qa",
        }
        for i in range(10)
    ]
    write_records(run / "select" / "train.jsonl", rows)
    return run


def test_task_types_are_compared_only_when_every_pool_record_has_one(tmp_path):
    kinds = ["qa", "math"] * 20
    warning = only(_set_of_qa_rows(build(tmp_path / "a", task_types=kinds)), "mix_shift")
    assert warning.message == (
        "the training set's mix of task types moved far from the pool's: "
        "math 50% of the pool (20 of 40), 0% of the set (0 of 10)"
    )
    assert "select.per_task: true" in warning.advice
    partly = build(tmp_path / "b", task_types=[*kinds[:-1], None])
    assert codes(_set_of_qa_rows(partly)) == []


def test_a_budget_filled_from_originals_says_by_how_much(tmp_path):
    counts = {
        "requested": {"distilled": 5, "original": 5},
        "selected": {"distilled": 2, "original": 8},
        "filled_shortfall": {"distilled": 0, "original": 3},
    }
    run = build(tmp_path / "a", train_distilled=2, select_counts=counts)
    warning = only(run, "budget_from_originals")
    assert "select asked for 5 distilled rows, 2 of 10 rows are distilled" in warning.message
    assert "3 originals filled the gap" in warning.message
    assert "select.mixup_ratio" in warning.advice
    why = [{"id": f"p{i}", "origin": "original", "filled_shortfall": i > 6} for i in range(10)]
    run = build(tmp_path / "b", train_distilled=2, select_counts={"rows": 10}, why=why)
    assert "3 originals filled the gap" in only(run, "budget_from_originals").message


ASKED = {"requested": {"distilled": 3, "original": 7}}  # select's counts: 3 distilled asked


def test_no_distilled_row_gives_the_command_that_trains_a_distiller(tmp_path):
    run = build(tmp_path / "a", train_distilled=0, select_counts=ASKED)
    warning = only(run, "no_distilled_in_set")
    assert "select asked for 3 distilled rows" in warning.message
    assert "all 10 rows are originals" in warning.message
    assert TRAIN_DISTILLER in warning.advice and "distill.generator.model=" in warning.advice
    assert "--model runs/distiller/grpo/final" in warning.advice
    none_asked = {"requested": {"distilled": 0, "original": 10}}
    run = build(tmp_path / "b", train_distilled=0, select_counts=none_asked)
    assert codes(run) == []
    run = build(
        tmp_path / "c",
        train_distilled=0,
        select_config={"mixup_ratio": 0.0},
        select_counts={"rows": 10},
    )
    assert codes(run) == []


def test_the_demo_run_pattern_gives_every_warning_it_should(tmp_path):
    """The bundled demo's shape: a judge with two scores, the top 30% as high, 5 of 30
    clusters distilled, GSM8K 33% of the pool and 3% of the set, 3 of 9 distilled rows."""
    scores = [2] * 103 + [1] * 17
    sources = ["sharegpt"] * 80 + ["gsm8k"] * 40
    counts = {
        "requested": {"distilled": 9, "original": 21},
        "selected": {"distilled": 3, "original": 27},
        "filled_shortfall": {"distilled": 0, "original": 6},
    }
    run = build(
        tmp_path / "demo",
        scores=scores,
        sources=sources,
        split={"threshold": 4, "high_fraction": 0.3},
        clusters=30,
        distilled=5,
        reject_reasons={"truncated": 12, "format": 6, "drift": 3, "copy": 1, "unclosed": 3},
        train_sources=["sharegpt"] * 29 + ["gsm8k"],
        select_counts=counts,
    )
    assert codes(run) == [
        "judge_no_separation",
        "nothing_high",
        "low_distill_yield",
        "mix_shift",
        "budget_from_originals",
    ]


# ---------------------------------------------------------------- where the user sees them


def _run_without_stages(run_dir: Path, monkeypatch) -> dict:
    """`run_pipeline` over a run directory whose stage folders are already there."""
    from lmmixup.config import RunConfig
    from lmmixup.workflows import pipeline

    monkeypatch.setattr(pipeline, "STAGES", [])
    return pipeline.run_pipeline(RunConfig(), run_dir)


def test_summary_json_and_the_report_carry_the_warnings(tmp_path, monkeypatch):
    run = build(tmp_path / "run", train_distilled=0, select_counts=ASKED)
    summary = _run_without_stages(run, monkeypatch)
    written = json.loads((run / "summary.json").read_text())
    assert written["warnings"] == summary["warnings"]
    assert [w["code"] for w in written["warnings"]] == ["no_distilled_in_set"]
    assert set(written["warnings"][0]) == {"code", "message", "advice"}
    html = (run / "report.html").read_text()
    box = html.index('id="warnings"')
    assert box < html.index("<nav>") < html.index('<section id="stages"')  # first screen
    assert "1 warning:" in html and "no distilled row reached the training set" in html
    assert TRAIN_DISTILLER in html


def test_a_healthy_run_or_an_old_summary_shows_no_warnings_box(tmp_path, monkeypatch):
    run = build(tmp_path / "run")
    assert _run_without_stages(run, monkeypatch)["warnings"] == []
    assert 'id="warnings"' not in (run / "report.html").read_text()
    old = make_run(tmp_path / "old")
    (old / "summary.json").write_text(json.dumps({"run_dir": str(old)}))  # no "warnings" key
    assert 'id="warnings"' not in build_report(old)
    (old / "summary.json").write_text("[not a summary")
    assert 'id="warnings"' not in build_report(old)


def test_warning_text_in_the_report_is_escaped(tmp_path):
    run = make_run(tmp_path / "run")
    hostile = {"code": "x", "message": "<script>alert(1)</script>", "advice": "a & b"}
    (run / "summary.json").write_text(json.dumps({"warnings": [hostile, "not a warning"]}))
    html = build_report(run)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "a &amp; b" in html
    assert "<script>alert(1)" not in html


def test_print_warnings_one_line_each_with_what_to_do():
    out = StringIO()
    long = "m" * 300 + " [your_spot_limit]"  # no wrapping, no markup
    print_warnings(
        [{"code": "mix_shift", "message": long, "advice": "do this"}], Console(file=out, width=80)
    )
    lines = out.getvalue().splitlines()
    assert "1 warning" in lines[0]
    assert lines[1] == f"warning [mix_shift]: {long}"
    assert lines[2] == "  what to do: do this"
    out = StringIO()
    print_warnings([], Console(file=out))
    assert out.getvalue() == ""


RUN_WITHOUT_STAGES = """
import sys
from lmmixup.cli import app as cli
from lmmixup.workflows import pipeline

pipeline.STAGES = []  # the stage folders are already in the run directory
sys.argv = ["lmmixup", *sys.argv[1:]]
cli.main()
"""


@pytest.mark.parametrize("quiet", [[], ["-q"]], ids=["plain", "quiet"])
def test_lmmixup_run_prints_the_warnings_last_even_with_q(tmp_path, quiet):
    run = build(tmp_path / "run", train_distilled=0, select_counts=ASKED)
    done = subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT_STAGES, *quiet, "run", "--run-dir", str(run)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    warning = next(i for i, line in enumerate(lines) if line.startswith("warning ["))
    assert lines[warning].startswith("warning [no_distilled_in_set]: no distilled row reached")
    assert TRAIN_DISTILLER in lines[warning + 1]
    assert warning > next(i for i, line in enumerate(lines) if line.startswith("report: "))


EXPERIMENT_AFTER_THE_PIPELINE = """
import sys
from lmmixup.cli import app as cli
from lmmixup.workflows import experiment

# the pipeline already wrote summary.json; no arm to train
experiment.run_experiment = lambda *args, **kwargs: {"tasks": [], "rows": []}
sys.argv = ["lmmixup", *sys.argv[1:]]
cli.main()
"""


def test_lmmixup_experiment_prints_the_pipeline_warnings_after_its_table(tmp_path, monkeypatch):
    run = build(tmp_path / "run", train_distilled=0, select_counts=ASKED)
    _run_without_stages(run, monkeypatch)
    assert [w["code"] for w in run_warnings(run)] == ["no_distilled_in_set"]
    done = subprocess.run(
        [sys.executable, "-c", EXPERIMENT_AFTER_THE_PIPELINE, "experiment", "-d", str(run)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    table = done.stdout.index("table -> ")
    assert done.stdout.index("warning [no_distilled_in_set]: ") > table
    (run / "summary.json").write_text('{"warnings": [{"code": "x"}, 3]}')  # malformed: none
    assert run_warnings(run) == [] and run_warnings(tmp_path / "nowhere") == []
