"""`lmmixup run` end to end on a small pool, with a fake OpenAI-compatible judge and distiller."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zlib

import pytest
from fake_openai_server import FakeOpenAIServer, ok

from lmmixup.io.jsonl import read_records, write_records

TOPICS = [
    "python lists",
    "french cooking",
    "tax law",
    "star formation",
    "chess openings",
    "sql joins",
]


class FakeLabServer(FakeOpenAIServer):
    """Rates pairs with a content-derived overall score and merges clusters into one pair."""

    def next_reply(self, content: str):
        if content.startswith("Merge these"):
            questions = re.findall(r"Q: (.*)", content)
            answers = re.findall(r"A: (.*)", content)
            merged_q = " and ".join(q.rstrip("?") for q in questions[:2]) + "?"
            merged_a = "(merged) " + " ".join(answers[:2])
            return ok(
                f"<think>\nCombine the members.\n</think>\n<answer>\nQ: {merged_q}\nA: {merged_a}\n</answer>"
            )
        overall = 9 if "(merged)" in content else 5 + zlib.crc32(content.encode()) % 5
        return ok(
            json.dumps({"rarity": 5, "complexity": 5, "informativeness": 6, "overall": overall})
        )


def _pool(path):
    rows = []
    for i in range(36):
        topic = TOPICS[i % len(TOPICS)]
        rows.append(
            {
                "id": f"p{i}",
                "prompt": f"Question {i} about {topic}: what should a beginner know first?",
                "completion": f"For {topic}, a beginner should first learn the basics, step {i}, with examples.",
                "source": "alpha" if i % 2 else "beta",
            }
        )
    write_records(path, rows)
    return rows


def _config(tmp_path, url, pool):
    backend = {
        "backend": "openai",
        "base_url": url,
        "model": "fake",
        "max_retries": 0,
        "timeout_s": 10,
    }
    cfg = {
        "import": {"sources": [str(pool)]},
        "rate": {"mode": "generate", "judge": backend},
        "split": {"threshold": 4},
        "cluster": {"min_size": 2, "max_size": 4, "mean_size": 3, "std_size": 1},
        "distill": {"generator": backend, "min_member_similarity": 0.2},
        "select": {"budget": 12, "mixup_ratio": 0.25},
    }
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture
def lab():
    with FakeLabServer() as server:
        yield server


def test_run_goes_from_pool_to_training_set_and_skips_on_rerun(tmp_path, lab):
    rows = _pool(tmp_path / "pool.jsonl")
    config = _config(tmp_path, lab.base_url, tmp_path / "pool.jsonl")
    env = {**os.environ, "LMMIXUP_CACHE": str(tmp_path / "cache"), "OPENAI_API_KEY": "sk-none"}
    cmd = [
        sys.executable,
        "-m",
        "lmmixup.cli",
        "-q",
        "run",
        str(config),
        "--run-dir",
        str(tmp_path / "run"),
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert first.returncode == 0, first.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert list(summary["stages"]) == [
        "import",
        "rate",
        "split",
        "cluster",
        "distill",
        "rerate",
        "select",
    ]
    assert all(stage["status"] == "complete" for stage in summary["stages"].values())

    train = read_records(summary["outputs"]["select.train"])
    assert len(train) == 12
    origins = [row["origin"] for row in train]
    assert origins.count("distilled") == 3 and origins.count("original") == 9
    pool_ids = {r["id"] for r in rows}
    for row in train:
        assert row["prompt"] and row["completion"]
        if row["origin"] == "distilled":
            assert len(row["member_ids"]) >= 2 and set(row["member_ids"]) <= pool_ids
        else:
            assert row["id"] in pool_ids and row["score"] >= 4
    clusters = read_records(summary["outputs"]["cluster.clusters"])
    low = read_records(summary["outputs"]["split.low"])
    assert sorted(i for c in clusters for i in c["member_ids"]) == sorted(r["id"] for r in low)

    requests = lab.count
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    assert "skipped" in second.stdout and lab.count == requests
    assert all(
        s["skipped"]
        for s in json.loads((tmp_path / "run" / "summary.json").read_text())["stages"].values()
    )

    # Moved elsewhere with one output deleted: only the stage that lost its output is redone.
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "run", moved)
    (moved / "select" / "train.jsonl").unlink()
    third = subprocess.run(
        [*cmd[:-1], str(moved)], capture_output=True, text=True, env=env, check=True
    )
    stages = json.loads((moved / "summary.json").read_text())["stages"]
    assert [name for name, stage in stages.items() if not stage["skipped"]] == ["select"]
    assert "stage 'select'" in third.stderr and "train.jsonl is missing" in third.stderr
    assert read_records(moved / "select" / "train.jsonl") == train and lab.count == requests


def test_a_run_whose_import_keeps_no_row_stops_before_rating(tmp_path, lab):
    pool = tmp_path / "pool.jsonl"
    _pool(pool)
    config = _config(tmp_path, lab.base_url, pool)
    cfg = json.loads(config.read_text())
    cfg["import"]["min_prompt_chars"] = 10_000  # every row is too short
    config.write_text(json.dumps(cfg))
    done = subprocess.run(
        [sys.executable, "-m", "lmmixup.cli", "run", str(config), "--run-dir", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "import kept no rows" in done.stderr, done.stderr
    assert lab.requests == [] and not (tmp_path / "r" / "rate").exists()


def test_the_report_orders_stages_as_the_pipeline_runs_them():
    from lmmixup.stages import PIPELINE_ORDER
    from lmmixup.workflows.pipeline import STAGES

    assert tuple(stage.name for stage in STAGES) == PIPELINE_ORDER
