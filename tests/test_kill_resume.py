"""kill -9 or Ctrl-C during rating and during distillation, then the same command: nothing lost
or doubled; a second writer on the same output is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import replace

from fake_openai_server import GOOD_JSON, FakeOpenAIServer, ok

from lmmixup.io.jsonl import read_records, write_records
from lmmixup.runtime.executor import RECORDS_PER_REQUEST_SLOT

GOOD_DISTILLATION = "<think>\nkeep both\n</think>\n<answer>\nQ: {q}\nA: {a}\n</answer>"


class SlowServer(FakeOpenAIServer):
    """Every reply takes a while, so a kill lands in the middle of the work."""

    def next_reply(self, content: str):
        if content.startswith("Merge these"):
            question = content.split("Q: ", 1)[1].split("\n", 1)[0]
            reply = ok(
                GOOD_DISTILLATION.format(q=question + " (all cases)", a="(merged) " + content[-80:])
            )
        else:
            reply = ok(GOOD_JSON)
        return replace(reply, delay_s=0.15)


def _kill_when(proc: subprocess.Popen, server: FakeOpenAIServer, requests: int) -> None:
    deadline = time.time() + 300  # generous: a loaded machine starts the CLI slowly
    while server.count < requests and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _cli(tmp_path, *args):
    env = {**os.environ, "LMMIXUP_CACHE": str(tmp_path / "cache"), "OPENAI_API_KEY": "sk-none"}
    return [sys.executable, "-m", "lmmixup.cli", "-q", *args], env


def _pool(path, count):
    write_records(
        path,
        [
            {
                "id": f"r{i}",
                "prompt": f"Question number {i} about topic {i % 3}?",
                "completion": f"Answer {i}: the topic {i % 3} explained.",
                "source": "s",
            }
            for i in range(count)
        ],
    )


def test_kill_during_rating_rates_each_sample_once_and_pays_once(tmp_path):
    _pool(tmp_path / "pool.jsonl", 16)
    with SlowServer() as server:
        cmd, env = _rate_command(tmp_path, server)
        proc = subprocess.Popen(cmd, env=env)
        _kill_when(proc, server, 7)
        before = server.count
        assert 0 < before < 16
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        rated = read_records(tmp_path / "rated.jsonl")
        assert sorted(r["id"] for r in rated) == sorted(f"r{i}" for i in range(16))
        assert all(r["rating"]["score"] == 4 for r in rated)
        # Only the records in process at the kill (at most RECORDS_PER_REQUEST_SLOT x
        # `concurrency`: in flight, or replied and not yet cached) may be paid twice.
        assert server.count <= 16 + RECORDS_PER_REQUEST_SLOT * 2


def test_kill_during_distillation_distills_each_cluster_once(tmp_path):
    _pool(tmp_path / "low.jsonl", 24)
    clusters = [
        {
            "cluster_id": f"c{j}",
            "source": "s",
            "member_ids": [f"r{2 * j}", f"r{2 * j + 1}"],
            "size": 2,
            "cohesion": 0.5,
        }
        for j in range(12)
    ]
    write_records(tmp_path / "clusters.jsonl", clusters)
    (tmp_path / "d.yaml").write_text(
        "min_member_similarity: -1\ngenerator:\n  batch_size: 2\n  concurrency: 2\n"
    )
    with SlowServer() as server:
        cmd, env = _cli(
            tmp_path,
            "distill",
            str(tmp_path / "clusters.jsonl"),
            "--pool",
            str(tmp_path / "low.jsonl"),
            "-o",
            str(tmp_path / "distilled.jsonl"),
            "--config",
            str(tmp_path / "d.yaml"),
            "--backend",
            "openai",
            "--base-url",
            server.base_url,
            "--model",
            "distiller",
        )
        proc = subprocess.Popen(cmd, env=env)
        _kill_when(proc, server, 5)
        assert 0 < server.count < 12
        subprocess.run(cmd, env=env, check=True, capture_output=True)
    out = read_records(tmp_path / "distilled.jsonl")
    rejects = (
        read_records(tmp_path / "distilled.rejects.jsonl")
        if (tmp_path / "distilled.rejects.jsonl").exists()
        else []
    )
    ids = [r["cluster_id"] for r in out] + [r["raw"]["cluster_id"] for r in rejects]
    assert sorted(ids) == sorted(c["cluster_id"] for c in clusters)
    assert server.count <= 12 + RECORDS_PER_REQUEST_SLOT * 2


def _rate_command(tmp_path, server):
    return _cli(
        tmp_path,
        "rate",
        str(tmp_path / "pool.jsonl"),
        "-o",
        str(tmp_path / "rated.jsonl"),
        "--backend",
        "openai",
        "--base-url",
        server.base_url,
        "--model",
        "judge",
        "--concurrency",
        "2",
        "--mode",
        "generate",  # no probe request: the counts below are exact
    )


def _wait_for(server: FakeOpenAIServer, proc: subprocess.Popen, requests: int) -> None:
    deadline = time.time() + 300
    while server.count < requests and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None and server.count >= requests


@contextmanager
def _sigint_not_ignored():
    """Start children with Ctrl-C at its default even when this process has it ignored (a
    background job of a non-interactive shell does, and its children inherit that): exec
    resets a handled signal to the default, but keeps an ignored one ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_exits_130_with_a_message_and_the_same_command_finishes_the_work(tmp_path):
    _pool(tmp_path / "pool.jsonl", 16)
    with GatedServer() as server:  # the run cannot finish before the Ctrl-C lands
        cmd, env = _rate_command(tmp_path, server)
        with _sigint_not_ignored():
            proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        _wait_for(server, proc, 2)
        proc.send_signal(signal.SIGINT)
        server.gate.set()  # the requests in flight finish and are kept
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130
        assert stderr.strip().splitlines()[-1] == "interrupted; re-run to continue"
        subprocess.run(cmd, env=env, check=True, capture_output=True)
    rated = read_records(tmp_path / "rated.jsonl")
    assert sorted(r["id"] for r in rated) == sorted(f"r{i}" for i in range(16))


class GatedServer(SlowServer):
    """Holds every reply until the gate opens, so a run is still at work when it is needed."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def next_reply(self, content: str):
        self.gate.wait(120)
        return super().next_reply(content)


def test_a_second_rate_on_the_same_output_is_refused_while_the_first_runs(tmp_path):
    _pool(tmp_path / "pool.jsonl", 16)
    with GatedServer() as server:
        cmd, env = _rate_command(tmp_path, server)
        first = subprocess.Popen(cmd, env=env)
        _wait_for(server, first, 1)
        second = subprocess.run(cmd, env=env, capture_output=True, text=True)
        server.gate.set()
        assert first.wait(timeout=120) == 0
    assert second.returncode == 2
    assert f"rated.jsonl is being written by process {first.pid}" in second.stderr
    rated = read_records(tmp_path / "rated.jsonl")
    assert sorted(r["id"] for r in rated) == sorted(f"r{i}" for i in range(16))
