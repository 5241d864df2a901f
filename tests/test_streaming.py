"""Stages that wait on a server stream: `concurrency` calls in flight, no call waits for
another, each result written as it finishes, each id once after a kill; the distiller reuses
the member embeddings the cluster stage saved."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fake_openai_server import GOOD_JSON, FakeOpenAIServer, ok
from typer.testing import CliRunner

from lmmixup.backends.base import Generation
from lmmixup.backends.embed import record_text
from lmmixup.config import BackendConfig, ClusterConfig, DistillConfig, RateConfig
from lmmixup.io.jsonl import read_records, write_records
from lmmixup.io.vectors import load_vectors, text_digest, vectors_beside
from lmmixup.runtime.executor import process_records
from lmmixup.stages.cluster import cluster_file
from lmmixup.stages.distill import distill_clusters
from lmmixup.stages.rate import judge_records

HERE = Path(__file__).parent
DEADLINE_S = 60.0
"""How long a test waits for something the code under test must bring about (never a timing)."""


def _until(condition) -> bool:
    """Whether `condition()` came true before DEADLINE_S."""
    end = time.monotonic() + DEADLINE_S
    while not condition() and time.monotonic() < end:
        time.sleep(0.01)
    return condition()


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _ids(path: Path) -> list[str]:
    return [record["id"] for record in read_records(path)] if path.exists() else []


def _stream(tmp_path: Path, fn, count: int, concurrency: int, **policy) -> dict:
    records = [(i + 1, {"id": f"r{i}", "value": i}) for i in range(count)]
    return process_records(
        records,
        fn,
        output=tmp_path / "out.jsonl",
        rejects=tmp_path / "rejects.jsonl",
        source="in.jsonl",
        batch_size=1,
        concurrency=concurrency,
        **policy,
    )


def _all(count: int) -> list[str]:
    return sorted(f"r{i}" for i in range(count))


# ------------------------------------------------------------------ the streaming executor


def test_each_result_is_written_as_it_finishes_while_a_slow_one_runs_on(tmp_path):
    out = tmp_path / "out.jsonl"
    released = []

    def fn(batch):
        if batch[0]["id"] == "r0":  # the slow one: waits until all the others are written
            released.append(_until(lambda: _lines(out) == 7))
        return [dict(record) for record in batch]

    counts = _stream(tmp_path, fn, 8, concurrency=3)
    assert released == [True]
    assert _ids(out) == [f"r{i}" for i in range(8)]  # back in input order once done
    assert counts["written"] == 8


def test_concurrency_calls_run_at_once_and_never_more(tmp_path):
    together = threading.Barrier(4, timeout=DEADLINE_S)  # broken unless 4 calls meet
    lock = threading.Lock()
    running, peak = [0], [0]

    def fn(batch):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        together.wait()
        with lock:
            running[0] -= 1
        return [dict(record) for record in batch]

    _stream(tmp_path, fn, 12, concurrency=4)
    assert peak[0] == 4 and sorted(_ids(tmp_path / "out.jsonl")) == _all(12)


def test_should_stop_starts_nothing_more_and_keeps_what_was_in_flight(tmp_path):
    started: list[str] = []

    def fn(batch):
        started.extend(record["id"] for record in batch)
        return [dict(record) for record in batch]

    first = _stream(tmp_path, fn, 20, concurrency=3, should_stop=lambda: len(started) >= 5)
    written = _ids(tmp_path / "out.jsonl")
    assert first["stopped_early"] == 1
    assert sorted(written) == sorted(started) and 5 <= len(written) <= 5 + 3
    second = _stream(tmp_path, fn, 20, concurrency=3)
    assert second["already_done"] == len(written) and second["stopped_early"] == 0
    assert _ids(tmp_path / "out.jsonl") == [f"r{i}" for i in range(20)]


def test_an_error_ends_the_stage_after_writing_the_calls_in_flight(tmp_path):
    failed = threading.Event()

    def fn(batch):
        (record,) = batch
        if record["id"] == "r3":
            failed.set()
            raise ValueError("boom")
        if record["id"] in ("r0", "r1", "r2"):
            failed.wait(DEADLINE_S)
        return [dict(record)]

    with pytest.raises(ValueError, match="boom"):
        _stream(tmp_path, fn, 8, concurrency=4)
    written = _ids(tmp_path / "out.jsonl")
    assert {"r0", "r1", "r2"} <= set(written) and "r3" not in written
    assert len(written) == len(set(written))


def test_kill_minus_9_while_streaming_then_rerun_gives_every_record_once(tmp_path):
    cmd = [sys.executable, str(HERE / "slow_stage.py"), str(tmp_path), "1000", "4"]
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    out = tmp_path / "double" / "out.jsonl"
    proc = subprocess.Popen(cmd, env=env)
    _until(lambda: _lines(out) >= 40 or proc.poll() is not None)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < _lines(out) < 1000
    subprocess.run(cmd, env=env, check=True)
    records = read_records(out)
    assert sorted(r["id"] for r in records) == _all(1000)
    assert all(r["value"] == 2 * int(r["id"][1:]) for r in records)


# ------------------------------------------------------------------ against a server


class GatedServer(FakeOpenAIServer):
    """Holds every reply until `target` requests were in flight at once (then none), and the
    reply to the prompt containing `slow` until every other request arrived."""

    def __init__(self, target: int, slow: str | None = None, total: int = 0) -> None:
        super().__init__()
        self.target, self.slow, self.total = target, slow, total
        self.opened = threading.Event()
        self.slow_released: list[bool] = []

    def next_reply(self, content: str):
        if self.max_in_flight >= self.target:  # this request is counted already
            self.opened.set()
        self.opened.wait(DEADLINE_S)
        if self.slow is not None and self.slow in content:
            self.slow_released.append(_until(lambda: self.count >= self.total))
        if content.startswith("Merge these"):
            return ok("<think>\nmerge\n</think>\n<answer>\nQ: merged?\nA: merged.\n</answer>")
        return ok(GOOD_JSON)


def _pool(path: Path, count: int) -> list[dict]:
    rows = [
        {
            "id": f"r{i}",
            "prompt": f"Question {i} about topic {i % 3}?",
            "completion": f"Answer {i}: topic {i % 3}.",
            "source": "s",
        }
        for i in range(count)
    ]
    write_records(path, rows)
    return rows


def _judge(server: GatedServer, concurrency: int) -> RateConfig:
    backend = BackendConfig(
        backend="openai", model="judge", base_url=server.base_url, concurrency=concurrency
    )
    return RateConfig(judge=backend, mode="generate")


def test_rate_keeps_concurrency_requests_in_flight_and_never_more(tmp_path):
    _pool(tmp_path / "pool.jsonl", 12)
    with GatedServer(target=4) as server:
        counts = judge_records(
            tmp_path / "pool.jsonl",
            tmp_path / "rated.jsonl",
            tmp_path / "rejects.jsonl",
            _judge(server, 4),
            None,
        )
    assert server.max_in_flight == 4
    assert counts["written"] == 12 and sorted(_ids(tmp_path / "rated.jsonl")) == _all(12)


def test_a_slow_reply_holds_back_no_other_record(tmp_path):
    # A barrier per batch or chunk would wait for the slow reply before sending the rest.
    _pool(tmp_path / "pool.jsonl", 20)
    with GatedServer(target=1, slow="Question 0 about", total=20) as server:
        judge_records(
            tmp_path / "pool.jsonl",
            tmp_path / "rated.jsonl",
            tmp_path / "rejects.jsonl",
            _judge(server, 4),
            None,
        )
    assert server.slow_released == [True]
    assert sorted(_ids(tmp_path / "rated.jsonl")) == _all(20)


class ConstantEmbedder:
    name = "constant"

    def encode(self, texts, **_):
        return np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (len(texts), 1))


def test_distill_concurrency_flag_sets_the_requests_in_flight(tmp_path, monkeypatch):
    from lmmixup.cli.app import app

    monkeypatch.setenv("LMMIXUP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("lmmixup.backends.embed.load_embedder", lambda *_: ConstantEmbedder())
    _pool(tmp_path / "low.jsonl", 16)
    members = [[f"r{2 * j}", f"r{2 * j + 1}"] for j in range(8)]
    clusters = [
        {"cluster_id": f"c{j}", "source": "s", "member_ids": ids, "size": 2, "cohesion": 0.5}
        for j, ids in enumerate(members)
    ]
    write_records(tmp_path / "clusters.jsonl", clusters)
    out = tmp_path / "distilled.jsonl"
    with GatedServer(target=3) as server:
        args = ["distill", str(tmp_path / "clusters.jsonl"), "--pool", str(tmp_path / "low.jsonl")]
        args += ["-o", str(out), "--backend", "openai", "--base-url", server.base_url]
        result = CliRunner().invoke(app, [*args, "--model", "distiller", "--concurrency", "3"])
    assert result.exit_code == 0, result.output
    assert server.max_in_flight == 3  # the default is 8
    rejects = out.with_name("distilled.rejects.jsonl")
    done = [r["cluster_id"] for r in read_records(out)]
    done += [r["raw"]["cluster_id"] for r in read_records(rejects)] if rejects.exists() else []
    assert sorted(done) == sorted(c["cluster_id"] for c in clusters)


# ------------------------------------------------------------------ member embeddings


class HashEmbedder:
    """A fixed random unit vector per text; remembers every text it was asked to embed."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def encode(self, texts, **_):
        self.texts += texts
        rows = np.array([np.random.default_rng(text_digest(t)).normal(size=8) for t in texts])
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


class PairGenerator:
    """Answers every cluster with the same pair."""

    name = fingerprint = "pairs"

    def generate(self, prompts, params):
        return [Generation("<answer>\nQ: merged?\nA: merged.\n</answer>", "eos") for _ in prompts]


def _distill(tmp_path: Path, monkeypatch, low: Path, name: str) -> tuple[list[dict], HashEmbedder]:
    embedder = HashEmbedder()
    monkeypatch.setattr("lmmixup.backends.load_generator", lambda cfg, cache: PairGenerator())
    monkeypatch.setattr("lmmixup.backends.embed.load_embedder", lambda *_: embedder)
    out = tmp_path / f"{name}.jsonl"
    cfg = DistillConfig(min_member_similarity=-1.0)
    distill_clusters(tmp_path / "clusters.jsonl", low, out, tmp_path / f"{name}.rejects.jsonl", cfg)
    records = read_records(out) + read_records(tmp_path / f"{name}.rejects.jsonl")
    return sorted(records, key=lambda r: r["id"]), embedder


def test_distill_reuses_the_member_embeddings_the_cluster_stage_saved(tmp_path, monkeypatch):
    rows = _pool(tmp_path / "low.jsonl", 8)
    monkeypatch.setattr("lmmixup.stages.cluster.load_embedder", lambda *_: HashEmbedder())
    cfg = ClusterConfig(min_size=2, max_size=2, mean_size=2, std_size=0, min_cohesion=0)
    cluster_file(tmp_path / "low.jsonl", tmp_path / "clusters.jsonl", cfg)
    saved = load_vectors(vectors_beside(tmp_path / "clusters.jsonl"), cfg.embedder)
    assert saved is not None and len(saved) == 8
    assert load_vectors(vectors_beside(tmp_path / "clusters.jsonl"), "another-embedder") is None

    reused, embedder = _distill(tmp_path, monkeypatch, tmp_path / "low.jsonl", "reused")
    member_texts = {record_text(row) for row in rows}
    assert embedder.texts and not member_texts & set(embedder.texts)  # only the pairs

    changed = [{**rows[0], "completion": "A new answer."}, *rows[1:]]
    write_records(tmp_path / "changed.jsonl", changed)
    _, embedder = _distill(tmp_path, monkeypatch, tmp_path / "changed.jsonl", "changed")
    assert member_texts & set(embedder.texts) == set()
    assert record_text(changed[0]) in embedder.texts  # a changed member is embedded again

    vectors_beside(tmp_path / "clusters.jsonl").unlink()
    standalone, embedder = _distill(tmp_path, monkeypatch, tmp_path / "low.jsonl", "alone")
    assert member_texts <= set(embedder.texts)
    assert [_checks(r) for r in standalone] == [_checks(r) for r in reused]


def _checks(record: dict) -> dict:
    """The checks of a distilled record or of a reject's record."""
    return record["raw"]["checks"] if "raw" in record else record["checks"]


def test_texts_asked_for_during_a_call_are_embedded_together_in_the_next():
    from lmmixup.backends.coalesce import CoalescingEncoder

    calls: list[list[str]] = []
    first_call = threading.Event()

    class Inner:
        def encode(self, texts):
            calls.append(list(texts))
            if len(calls) == 1:  # hold the first call until three more requests wait
                first_call.set()
                assert _until(lambda: encoder.waiting == 3)
            return np.array([[float(len(t))] for t in texts], dtype=np.float32)

    encoder = CoalescingEncoder(Inner())
    results: dict[str, np.ndarray] = {}

    def ask(texts: list[str]) -> None:
        results[texts[0]] = encoder.encode(texts)

    first = threading.Thread(target=ask, args=(["a"],))
    first.start()
    first_call.wait(DEADLINE_S)
    others = [threading.Thread(target=ask, args=(t,)) for t in (["bb"], ["ccc", "dddd"], ["eeeee"])]
    for thread in others:
        thread.start()
    for thread in [first, *others]:
        thread.join(DEADLINE_S)
    assert len(calls) == 2 and sorted(calls[1]) == ["bb", "ccc", "dddd", "eeeee"]
    assert results["ccc"].ravel().tolist() == [3.0, 4.0] and results["eeeee"].ravel().tolist() == [
        5.0
    ]
