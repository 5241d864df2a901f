"""`lmmixup rate` end to end: a fake OpenAI-compatible judge, failures, resume, the request cap."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from fake_openai_server import FakeOpenAIServer, ok

from lmmixup.io import read_records, write_records
from lmmixup.rating import build_rubric_messages

SCENARIOS = {
    "json": 4,
    "fenced-json": 4,
    "out-of-range": 5,
    "429-then-ok": 4,
    "500-then-ok": 4,
    "garbage": None,
    "500-forever": None,
}


def _pool(tmp_path: Path) -> Path:
    rows = [
        {"id": name, "prompt": f"Task [[fake:{name}]]", "completion": "An answer."}
        for name in SCENARIOS
    ]
    path = tmp_path / "pool.jsonl"
    write_records(path, rows)
    return path


def _rate(
    tmp_path: Path, server: FakeOpenAIServer, key: str, *extra: str
) -> subprocess.CompletedProcess:
    cfg = tmp_path / "rate.yaml"
    cfg.write_text(
        "mode: generate\nattempts: 2\njudge:\n  max_retries: 1\n  timeout_s: 5\n  concurrency: 3\n"
    )
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
        server.base_url,
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
        assert by_id["out-of-range"]["rating"]["overall"] == 10
        assert "failed 2" in first.stdout
        paid = server.count

        for record in read_records(pool):
            if SCENARIOS[record["id"]] is None:
                server.script(_judge_content(record), ok())
        second = _rate(tmp_path, server, key)
        assert second.returncode == 0, second.stderr
        rated = read_records(tmp_path / "rated.jsonl")
        assert sorted(r["id"] for r in rated) == sorted(SCENARIOS)
        assert all(r["rating"] is not None for r in rated)
        assert server.count == paid + 2  # only the two failures were asked again
    manifest = json.loads((tmp_path / "rated.manifest.json").read_text())
    assert (
        manifest["status"] == "complete"
        and manifest["counts"]["judge"]["judge_usage"]["requests"] == 2
    )
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert leaked == [] and key not in first.stdout + first.stderr + second.stdout + second.stderr


def test_request_cap_stops_cleanly_and_the_rerun_continues(tmp_path):
    key = "sk-cap-test"
    rows = [
        {"id": f"s{i}", "prompt": f"Question {i} [[fake:json]]", "completion": "Yes."}
        for i in range(9)
    ]
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
        [{"id": str(i), "prompt": f"p{i}", "completion": "c"} for i in range(5)],
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
    assert done.returncode == 0, done.stderr
    ratings = [r["rating"] for r in read_records(tmp_path / "rated.jsonl")]
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
        {
            "id": f"q{i}",
            "prompt": f"Explain {topics[i % 4]} point {i} [[fake:json]]",
            "completion": f"Here is how {topics[i % 4]} works, part {i}.",
        }
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
