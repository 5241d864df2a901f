"""Per-record stages are built from settings: they pickle before `open()`, and one rebuilt in
another process gives the same results as in this one."""

from __future__ import annotations

import multiprocessing
import pickle
from pathlib import Path

from fake_openai_server import FakeOpenAIServer

from lmmixup.config import DistillConfig, RateConfig
from lmmixup.io.jsonl import read_records
from lmmixup.runtime.executor import LocalExecutor
from lmmixup.stages.distill import DistillStage
from lmmixup.stages.judge import JudgeStage
from lmmixup.stages.rate import KnnStage

BATCH = [
    {"id": "a", "prompt": "Explain bread [[fake:json]]", "completion": "Knead it.", "source": "t"},
    {"id": "b", "prompt": "Explain tax [[fake:garbage]]", "completion": "Pay it.", "source": "t"},
    {"id": "c", "prompt": "Explain chords [[fake:json]]", "completion": "Strum.", "source": "t"},
]


def _judge_settings(base_url: str) -> RateConfig:
    judge = {"backend": "openai", "base_url": base_url, "model": "judge-model", "max_retries": 1}
    return RateConfig.model_validate({"judge": judge, "mode": "generate", "attempts": 2})


def judge_in_this_process(pickled: bytes) -> tuple[list[dict], dict]:
    """Unpickle a stage, open it, judge BATCH, close it: what a worker process would do."""
    stage = pickle.loads(pickled)
    stage.open()
    try:
        return stage.process(BATCH), stage.close()
    except BaseException:
        stage.close()
        raise


def test_stages_built_from_settings_pickle_before_open(tmp_path):
    stages = [
        JudgeStage(RateConfig(), tmp_path / "calls.sqlite", run_index=1),
        KnnStage(RateConfig(propagate=0.5), tmp_path / "library", leave_judged=True),
        DistillStage(DistillConfig(), tmp_path / "pool.jsonl", tmp_path / "calls.sqlite"),
    ]
    for stage in stages:
        copy = pickle.loads(pickle.dumps(stage))
        assert type(copy) is type(stage) and copy.batch_size == stage.batch_size
        assert copy.cfg == stage.cfg


def test_a_judge_stage_rebuilt_in_a_spawned_process_gives_the_same_results(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-none")
    with FakeOpenAIServer() as server:
        cfg = _judge_settings(server.base_url)
        here = judge_in_this_process(pickle.dumps(JudgeStage(cfg, tmp_path / "here.sqlite")))
        spawn = multiprocessing.get_context("spawn")
        with spawn.Pool(1) as pool:
            there = pool.apply(
                judge_in_this_process, (pickle.dumps(JudgeStage(cfg, tmp_path / "there.sqlite")),)
            )
    assert there[0] == here[0]
    assert [r["rating"] is None for r in here[0]] == [False, True, False]
    # three first asks and one retry of the unusable reply, each process asking the server
    assert here[1]["cache"]["misses"] == there[1]["cache"]["misses"] == 4
    assert Path(there[1]["cache"]["path"]).name == "there.sqlite"


def test_the_local_executor_writes_what_the_stage_returns_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-none")
    pool = [(number, record) for number, record in enumerate(BATCH, start=1)]
    out, rejects = tmp_path / "rated.jsonl", tmp_path / "rejects.jsonl"
    with FakeOpenAIServer() as server:
        stage = JudgeStage(_judge_settings(server.base_url), tmp_path / "calls.sqlite")
        first = LocalExecutor().run(stage, pool, output=out, rejects=rejects, source="pool")
        again = LocalExecutor().run(stage, pool, output=out, rejects=rejects, source="pool")
    assert (first.counts["written"], first.report["cache"]["misses"]) == (3, 4)
    # the failed rating is not done: the second run asks the judge again about it only
    assert (again.counts["already_done"], again.counts["written"]) == (2, 1)
    assert sorted(r["id"] for r in read_records(out)) == ["a", "b", "c"]
