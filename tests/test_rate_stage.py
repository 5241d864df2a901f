"""`lmmixup rate` end to end: a fake OpenAI-compatible judge, failures, resume, the request cap."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from fake_openai_server import FakeOpenAIServer, last_user_content, ok

from lmmixup.io.jsonl import read_records, write_records
from lmmixup.method.rubric import build_rubric_messages
from lmmixup.stages.judge import MAX_JUDGED_CHARS
from lmmixup.stages.rate import chosen_for_judge

SCENARIOS = {
    "json": 4,
    "fenced-json": 4,
    "out-of-range": None,
    "429-then-ok": 4,
    "500-then-ok": 4,
    "garbage": None,
    "500-forever": None,
}
FAILED = sum(score is None for score in SCENARIOS.values())
JUDGE_SETTINGS = "attempts: 2\njudge:\n  max_retries: 1\n  timeout_s: 5\n  concurrency: 3\n"


def _row(record_id: str, prompt: str, completion: str = "An answer.") -> dict:
    return {"id": record_id, "prompt": prompt, "completion": completion, "source": "test"}


def _pool(tmp_path: Path) -> Path:
    rows = [_row(name, f"Task [[fake:{name}]]") for name in SCENARIOS]
    path = tmp_path / "pool.jsonl"
    write_records(path, rows)
    return path


def _rate(
    tmp_path: Path,
    server: FakeOpenAIServer | None,
    key: str,
    *extra: str,
    settings: str = "mode: generate\n" + JUDGE_SETTINGS,
    base_url: str | None = None,
) -> subprocess.CompletedProcess:
    cfg = tmp_path / "rate.yaml"
    cfg.write_text(settings)
    env = {**os.environ, "JUDGE_KEY": key, "LMMIXUP_CACHE": str(tmp_path / "cache")}
    cmd = [
        sys.executable,
        "-m",
        "lmmixup.cli",
        "-v",
        "rate",
        str(tmp_path / "pool.jsonl"),
        "-o",
        str(tmp_path / "rated.jsonl"),
        "--config",
        str(cfg),
        "--backend",
        "openai",
        "--base-url",
        base_url or server.base_url,
        "--model",
        "judge-model",
        "--api-key-env",
        "JUDGE_KEY",
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)


def _judge_content(record: dict) -> str:
    return build_rubric_messages(record["prompt"], record["completion"])[-1]["content"]


def test_every_sample_is_rated_or_failed_and_a_rerun_fills_the_failures(tmp_path):
    key = f"sk-test-{secrets.token_hex(12)}"
    pool = _pool(tmp_path)
    with FakeOpenAIServer() as server:
        first = _rate(tmp_path, server, key)
        assert first.returncode == 0, first.stderr
        by_id = {r["id"]: r for r in read_records(tmp_path / "rated.jsonl")}
        assert set(by_id) == set(SCENARIOS)
        for name, score in SCENARIOS.items():
            if score is None:
                assert by_id[name]["rating"] is None and by_id[name]["rating_error"], name
            else:
                assert by_id[name]["rating"]["score"] == score, name
        assert "overall is 42, not an integer from 1 to 10" in by_id["out-of-range"]["rating_error"]
        assert f"failed {FAILED}" in first.stdout
        paid = server.count

        for record in read_records(pool):
            if SCENARIOS[record["id"]] is None:
                server.script(_judge_content(record), ok())
        second = _rate(tmp_path, server, key)
        assert second.returncode == 0, second.stderr
        rated = read_records(tmp_path / "rated.jsonl")
        assert sorted(r["id"] for r in rated) == sorted(SCENARIOS)
        assert all(r["rating"] is not None for r in rated)
        assert server.count == paid + FAILED  # only the failures were asked again
    manifest = json.loads((tmp_path / "rated.manifest.json").read_text())
    assert (
        manifest["status"] == "complete"
        and manifest["counts"]["judge"]["judge_usage"]["requests"] == FAILED
    )
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert leaked == [] and key not in first.stdout + first.stderr + second.stdout + second.stderr


def test_request_cap_stops_cleanly_and_the_rerun_continues(tmp_path):
    key = "sk-cap-test"
    rows = [_row(f"s{i}", f"Question {i} [[fake:json]]", "Yes.") for i in range(9)]
    write_records(tmp_path / "pool.jsonl", rows)
    with FakeOpenAIServer() as server:
        capped = _rate(tmp_path, server, key, "--max-requests", "4")
        assert capped.returncode == 2
        assert "max_requests=4" in capped.stderr and "re-run to continue" in capped.stderr
        saved = [r for r in read_records(tmp_path / "rated.jsonl") if r["rating"] is not None]
        assert 1 <= len(saved) <= 4 and server.count <= 4
        paid = server.count
        done = _rate(tmp_path, server, key)
        assert done.returncode == 0, done.stderr
        rated = read_records(tmp_path / "rated.jsonl")
        assert sorted(r["id"] for r in rated) == sorted(r["id"] for r in rows)
        assert all(r["rating"]["score"] == 4 for r in rated)
        assert server.count == paid + 9 - len(saved)  # paid calls are never repeated


@pytest.mark.slow
def test_logprob_judge_with_tiny_model_rates_everything(tmp_path, tiny_llama):
    write_records(
        tmp_path / "pool.jsonl",
        [_row(str(i), f"p{i}", "c") for i in range(5)],
    )
    env = {**os.environ, "LMMIXUP_CACHE": str(tmp_path / "cache")}
    cmd = [
        sys.executable,
        "-m",
        "lmmixup.cli",
        "-q",
        "rate",
        str(tmp_path / "pool.jsonl"),
        "-o",
        str(tmp_path / "rated.jsonl"),
        "--model",
        str(tiny_llama),
        "--mode",
        "logprob",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    ratings = [r["rating"] for r in read_records(tmp_path / "rated.jsonl")]
    # More than half failed: the command says what to do and exits 1 (the stage stays partial).
    mostly_failed = ratings.count(None) > len(ratings) / 2
    assert done.returncode == (1 if mostly_failed else 0), done.stderr
    assert ("what to do" in done.stderr) == mostly_failed
    # A random model spreads little probability over the digits: every sample is either rated
    # from that distribution or recorded as a failure, never given a default score.
    for record in read_records(tmp_path / "rated.jsonl"):
        rating = record["rating"]
        assert (rating is None and "probability" in record["rating_error"]) or (
            rating["method"] == "judge-logprob" and 1 <= rating["expected_overall"] <= 10
        )
    assert len(ratings) == 5


def test_propagation_judges_a_fraction_and_scores_the_rest(tmp_path):
    topics = ["baking bread", "linear algebra", "tax returns", "guitar chords"]
    rows = [
        _row(
            f"q{i}",
            f"Explain {topics[i % 4]} point {i} [[fake:json]]",
            f"Here is how {topics[i % 4]} works, part {i}.",
        )
        for i in range(80)
    ]
    write_records(tmp_path / "pool.jsonl", rows)
    with FakeOpenAIServer() as server:
        done = _rate(tmp_path, server, "sk-x", "--propagate", "0.5", "--curate")
        assert done.returncode == 0, done.stderr
        judged_requests = server.count
    rated = read_records(tmp_path / "rated.jsonl")
    assert sorted(r["id"] for r in rated) == sorted(r["id"] for r in rows)
    methods = [r["rating"]["method"] for r in rated]
    assert methods.count("judge-generate") == judged_requests and "knn" in methods
    assert all(r["rating"]["score"] == 4 for r in rated)  # every judged sample got 8 -> score 4
    counts = json.loads((tmp_path / "rated.manifest.json").read_text())["counts"]
    assert counts["agreement"]["held_out"] >= 2 and counts["curation"]["n_items"] == judged_requests
    library = tmp_path / "rated.work" / "library"

    cmd = [
        sys.executable,
        "-m",
        "lmmixup.cli",
        "-q",
        "rate",
        str(tmp_path / "pool.jsonl"),
        "-o",
        str(tmp_path / "knn.jsonl"),
        "--method",
        "knn",
        "--library",
        str(library),
    ]
    scored = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "LMMIXUP_CACHE": str(tmp_path / "cache")},
    )
    assert scored.returncode == 0, scored.stderr
    assert all(r["rating"]["method"] == "knn" for r in read_records(tmp_path / "knn.jsonl"))


OUT_OF_RANGE = [
    '{"overall": 1e3}',
    '{"overall": "80/100"}',
    '{"overall": "95%"}',
    '{"overall": 0}',
    '{"overall": -3}',
    '{"overall": "3/5"}',
    '{"overall": 7.5}',
    '{"overall": 8, "rarity": 11}',
    '{"overall": 8, "informativeness": "80/100"}',
]


def test_a_rating_outside_1_to_10_is_a_recorded_failure_never_a_score(tmp_path):
    rows = [_row(f"bad{i}", f"Rate me {i}.") for i in range(len(OUT_OF_RANGE))]
    good = _row("good", "And me.")
    write_records(tmp_path / "pool.jsonl", [*rows, good])
    with FakeOpenAIServer() as server:
        for row, reply in zip(rows, OUT_OF_RANGE, strict=True):
            server.script(_judge_content(row), ok(reply))
        server.script(_judge_content(good), ok('{"overall": 8}'))
        done = _rate(tmp_path, server, "sk-x")
    # Most ratings failed: exit 1 with what to do, never a silent success.
    assert done.returncode == 1, done.stderr
    assert "what to do" in done.stderr
    by_id = {r["id"]: r for r in read_records(tmp_path / "rated.jsonl")}
    assert by_id.pop("good")["rating"]["overall"] == 8
    assert len(by_id) == len(OUT_OF_RANGE)
    for record in by_id.values():
        assert record["rating"] is None, record
        assert "not an integer from 1 to 10" in record["rating_error"]
    assert f"failed {len(OUT_OF_RANGE)}" in done.stdout
    assert json.loads((tmp_path / "rated.manifest.json").read_text())["status"] == "partial"


def _topic_rows(count: int, directive) -> list[dict]:
    """Rows on four topics; `directive(id)` names the fake server scenario of each."""
    topics = ["baking bread", "linear algebra", "tax returns", "guitar chords"]
    return [
        _row(
            f"q{i}",
            f"Explain {topics[i % 4]} point {i} [[fake:{directive(f'q{i}')}]]",
            f"Here is how {topics[i % 4]} works, part {i}.",
        )
        for i in range(count)
    ]


def test_propagation_keeps_failed_judge_ratings_and_a_rerun_retries_exactly_them(tmp_path):
    judged = [f"q{i}" for i in range(40) if chosen_for_judge(f"q{i}", 0.5, 0)]
    failing = set(judged[:6])
    rows = _topic_rows(40, lambda i: "garbage" if i in failing else "json")
    write_records(tmp_path / "pool.jsonl", rows)
    with FakeOpenAIServer() as server:
        first = _rate(tmp_path, server, "sk-x", "--propagate", "0.5")
        assert first.returncode == 0, first.stderr
        rated = read_records(tmp_path / "rated.jsonl")
        assert sorted(r["id"] for r in rated) == sorted(r["id"] for r in rows)
        nulls = {r["id"] for r in rated if r["rating"] is None}
        assert nulls == failing and all(r["rating_error"] for r in rated if r["id"] in nulls)
        assert "failed 6" in first.stdout
        manifest = json.loads((tmp_path / "rated.manifest.json").read_text())
        assert manifest["status"] == "partial" and manifest["counts"]["failed"] == 6

        paid = server.count
        for row in rows:
            if row["id"] in failing:
                server.script(_judge_content(row), ok())
        second = _rate(tmp_path, server, "sk-x", "--propagate", "0.5")
        assert second.returncode == 0, second.stderr
        assert server.count == paid + 6  # exactly the six failures were asked again
    rated = read_records(tmp_path / "rated.jsonl")
    assert sorted(r["id"] for r in rated) == sorted(r["id"] for r in rows)
    assert all(r["rating"] is not None for r in rated)
    assert json.loads((tmp_path / "rated.manifest.json").read_text())["status"] == "complete"


def test_a_propagation_run_inside_lmmixup_run_keeps_failed_ratings_too(tmp_path, monkeypatch):
    from lmmixup.config import RunConfig
    from lmmixup.runtime.runner import run_stage
    from lmmixup.workflows.pipeline import STAGES

    judged = [f"q{i}" for i in range(40) if chosen_for_judge(f"q{i}", 0.5, 0)]
    rows = _topic_rows(40, lambda i: "garbage" if i in judged[:3] else "json")
    write_records(tmp_path / "pool.jsonl", rows)
    rate = next(stage for stage in STAGES if stage.name == "rate")
    monkeypatch.setenv("LMMIXUP_CACHE", str(tmp_path / "cache"))
    with FakeOpenAIServer() as server:
        judge = {"backend": "openai", "base_url": server.base_url, "model": "judge-model"}
        rate_cfg = {"judge": judge, "mode": "generate", "propagate": 0.5}
        cfg = RunConfig.model_validate({"rate": rate_cfg})
        result = run_stage(
            tmp_path / "run",
            "rate",
            inputs=[tmp_path / "pool.jsonl"],
            config={},
            body=lambda stage: rate.body(stage, cfg, {"import": {"pool": tmp_path / "pool.jsonl"}}),
        )
    rated = read_records(result.path / "rated.jsonl")
    assert len(rated) == 40 and sum(r["rating"] is None for r in rated) == 3
    assert result.manifest["status"] == "partial" and result.manifest["counts"]["failed"] == 3


def test_propagation_whose_judge_failed_everywhere_says_why_not_the_fraction(tmp_path):
    write_records(tmp_path / "pool.jsonl", _topic_rows(12, lambda _: "400"))
    with FakeOpenAIServer() as server:
        done = _rate(tmp_path, server, "sk-x", "--propagate", "0.5")
    assert done.returncode == 2
    assert "the judge failed on" in done.stderr and "fake error 400" in done.stderr
    assert "rate.propagate" not in done.stderr
    failed = read_records(tmp_path / "rated.jsonl")
    assert failed and all(r["rating"] is None and r["rating_error"] for r in failed)
    assert json.loads((tmp_path / "rated.manifest.json").read_text())["status"] != "complete"


def test_a_server_without_logprobs_rates_with_generate_and_says_why(tmp_path):
    write_records(tmp_path / "pool.jsonl", [_row("a", "Q [[fake:json]]")])
    with FakeOpenAIServer() as server:  # its replies carry no logprobs
        done = _rate(tmp_path, server, "sk-x", settings=JUDGE_SETTINGS)
        assert done.returncode == 0, done.stderr
        assert read_records(tmp_path / "rated.jsonl")[0]["rating"]["method"] == "judge-generate"
        manifest = json.loads((tmp_path / "rated.manifest.json").read_text())
        assert manifest["config"]["mode"] == "auto"
        judged = manifest["counts"]["judge"]
        assert judged["judge_mode"] == "generate"  # recorded as resolved
        assert "gave no logprobs" in judged["judge_mode_note"]
        probe, judged = server.requests
        assert probe.body["logprobs"] is True and probe.body["max_tokens"] == 1
        assert "logprobs" not in judged.body


def test_an_in_process_vllm_judge_refuses_logprob_before_starting(tmp_path):
    write_records(tmp_path / "pool.jsonl", [_row("a", "Q [[fake:json]]")])
    out = tmp_path / "x.jsonl"
    refused = subprocess.run(
        [sys.executable, "-m", "lmmixup.cli", "rate", str(tmp_path / "pool.jsonl"), "-o", str(out)]
        + ["--backend", "vllm", "--model", "m", "--mode", "logprob"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "mode=logprob" in refused.stderr and "--mode generate" in refused.stderr
    assert not out.exists() and not (tmp_path / "x.manifest.json").exists()


def test_texts_cut_for_the_judge_are_marked_and_counted(tmp_path):
    long = _row("long", "Q [[fake:json]]", "z" * (MAX_JUDGED_CHARS + 1000))
    write_records(tmp_path / "pool.jsonl", [long, _row("short", "Q2 [[fake:json]]")])
    with FakeOpenAIServer() as server:
        done = _rate(tmp_path, server, "sk-x")
        shown = max(last_user_content(request.body).count("z") for request in server.requests)
    assert done.returncode == 0, done.stderr
    assert shown == MAX_JUDGED_CHARS
    by_id = {r["id"]: r for r in read_records(tmp_path / "rated.jsonl")}
    assert by_id["long"]["truncated_for_judge"] == ["completion"] and by_id["long"]["rating"]
    assert "truncated_for_judge" not in by_id["short"]
    assert "1 records were judged on the first 4,000 characters" in done.stdout
    counts = json.loads((tmp_path / "rated.manifest.json").read_text())["counts"]
    assert counts["truncated_for_judge"] == 1


def test_an_unreachable_judge_stops_the_stage_with_an_error(tmp_path):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    write_records(tmp_path / "pool.jsonl", [_row(f"r{i}", f"Q{i}") for i in range(20)])
    done = _rate(tmp_path, None, "sk-x", base_url=dead)
    assert done.returncode == 2 and dead.removesuffix("/v1") in done.stderr
    manifest = json.loads((tmp_path / "rated.manifest.json").read_text())
    assert manifest["status"] != "complete"
