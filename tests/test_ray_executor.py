"""`lmmixup run --executor ray` on a local 2-node Ray cluster: the local executor's training
set, a killed worker retried, a killed driver resumed (every id once), the request cap held
across workers, and no Ray process left afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from test_pipeline import FakeLabServer

from lmmixup.config import ExecutorConfig, RateConfig
from lmmixup.errors import LmmixupError
from lmmixup.io.jsonl import read_records, write_records

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from lmmixup.runtime.executor import LocalExecutor  # noqa: E402
from lmmixup.runtime.executors import executor_for, using  # noqa: E402
from lmmixup.runtime.ray_executor import RayExecutor, merge_reports, own_error  # noqa: E402
from lmmixup.stages.rate import judge_records  # noqa: E402

RAY_DAEMONS = ("raylet", "gcs_server")


class SlowLab(FakeLabServer):
    """The lab server of the pipeline test, each reply a little late (kills land mid-stage)."""

    delay_s = 0.0

    def next_reply(self, content: str):
        return replace(super().next_reply(content), delay_s=self.delay_s)


def _processes(*names: str) -> dict[int, str]:
    """pid -> command line of the running processes whose command line names one of `names`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if any(name in cmd for name in names):
                found[int(entry.name)] = cmd
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two Ray nodes of one CPU each on this machine; afterwards, none of its processes left."""
    before = set(_processes(*RAY_DAEMONS))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    node = {"num_cpus": 1, "object_store_memory": 80 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    cluster.add_node(**node)
    ours = set(_processes(*RAY_DAEMONS)) - before
    assert len(ours) >= 3  # a raylet per node and the head's GCS
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster.address
    ray.shutdown()
    cluster.shutdown()
    deadline = time.time() + 30
    while ours & set(_processes(*RAY_DAEMONS)) and time.time() < deadline:
        time.sleep(0.2)
    assert not ours & set(_processes(*RAY_DAEMONS)), "Ray processes left behind"
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def lab():
    with SlowLab() as server:
        yield server


def _pool(path: Path, count: int) -> list[dict]:
    topics = ["python lists", "french cooking", "tax law", "star formation", "sql joins"]
    rows = [
        {
            "id": f"p{i}",
            "prompt": f"Question {i} about {topics[i % 5]}: what should a beginner know first?",
            "completion": f"For {topics[i % 5]}, a beginner learns the basics, step {i}.",
            "source": "alpha" if i % 2 else "beta",
        }
        for i in range(count)
    ]
    write_records(path, rows)
    return rows


def _backend(url: str, **extra) -> dict:
    return {"backend": "openai", "base_url": url, "model": "fake", "max_retries": 0, **extra}


def _config(tmp_path: Path, url: str) -> Path:
    # concurrency 1: the local executor writes in input order too (see the GUIDE, 1.9)
    backend = _backend(url, timeout_s=10, concurrency=1)
    cfg = {
        "import": {"sources": [str(tmp_path / "pool.jsonl")]},
        "rate": {"mode": "generate", "judge": backend},
        "split": {"threshold": 4},
        "cluster": {"min_size": 2, "max_size": 4, "mean_size": 3, "std_size": 1},
        "distill": {"generator": backend, "min_member_similarity": 0.2},
        "select": {"budget": 8, "mixup_ratio": 0.125},
        "executor": {"actors": 2, "num_cpus": 0.5, "batch_size": 2},
    }
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(cfg))
    return path


def _cli(tmp_path: Path, run_dir: str, *args: str) -> tuple[list[str], dict]:
    env = {
        **os.environ,
        "LMMIXUP_CACHE": str(tmp_path / f"cache-{run_dir}"),
        "OPENAI_API_KEY": "sk-none",
    }
    cmd = [sys.executable, "-m", "lmmixup.cli", "-q", "run", str(tmp_path / "run.yaml")]
    return [*cmd, "--run-dir", str(tmp_path / run_dir), *args], env


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, lab):
    """The small pipeline with the local executor: the reference outputs."""
    tmp_path = tmp_path_factory.mktemp("ray-pipeline")
    _pool(tmp_path / "pool.jsonl", 20)
    _config(tmp_path, lab.base_url)
    cmd, env = _cli(tmp_path, "local")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    return tmp_path


def _outputs(run_dir: Path) -> dict[str, list[dict]]:
    names = ("rate/rated.jsonl", "distill/distilled.jsonl", "rerate/kept.jsonl")
    return {name: read_records(run_dir / name) for name in (*names, "select/train.jsonl")}


def test_killed_driver_then_same_command_gives_the_local_outputs(cluster, local_run, lab):
    """The Ray run's driver is killed mid-rating; the same command again ends with every id
    rated once and the same files, line for line, as the local executor's run."""
    cmd, env = _cli(local_run, "ray", "--executor", "ray", "--ray-address", cluster)
    rated = local_run / "ray" / "rate" / "rated.jsonl"
    lab.delay_s = 0.3
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 300  # generous: a loaded machine starts actors slowly
        while time.time() < deadline and proc.poll() is None:
            if rated.exists() and len(rated.read_text().splitlines()) >= 6:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        lab.delay_s = 0.0
    written = len(read_records(rated))
    assert 6 <= written < 20  # killed mid-stage
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert again.returncode == 0, again.stderr
    local, on_ray = _outputs(local_run / "local"), _outputs(local_run / "ray")
    assert [r["id"] for r in on_ray["rate/rated.jsonl"]] == [f"p{i}" for i in range(20)]
    assert on_ray == local  # same records, same order: batches come back in input order
    assert len(local["select/train.jsonl"]) == 8 and local["distill/distilled.jsonl"]
    counts = json.loads((local_run / "ray" / "rate" / "manifest.json").read_text())["counts"]
    assert counts["judge"]["already_done"] == written
    assert counts["judge"]["written"] == 20 - written
    # the workers' reports, summed: each rating left was asked of the server, or came from
    # the call cache the killed run's workers filled (calls done, lines not yet written)
    requests, hits = counts["judge"]["judge_usage"]["requests"], counts["cache"]["hits"]
    assert requests + hits == 20 - written and requests > 0


def _worker_pids() -> set[int]:
    return set(_processes("ray::MapWorker"))


def test_a_killed_worker_is_restarted_and_its_batch_done_again(cluster, tmp_path, lab):
    rows = _pool(tmp_path / "pool.jsonl", 24)
    cfg = RateConfig(mode="generate", judge=_backend(lab.base_url, concurrency=2))
    out, bad = tmp_path / "rated.jsonl", tmp_path / "rejects.jsonl"
    victims: list[int] = []

    def kill_one_worker() -> None:
        deadline = time.time() + 90
        while time.time() < deadline and not out.exists():
            time.sleep(0.02)
        while time.time() < deadline and not victims:
            if out.exists() and len(out.read_text().splitlines()) >= 4 and _worker_pids():
                victims.append(min(_worker_pids()))
                os.kill(victims[0], signal.SIGKILL)
            time.sleep(0.02)

    lab.delay_s = 0.2
    killer = threading.Thread(target=kill_one_worker)
    killer.start()
    try:
        with using(RayExecutor(ExecutorConfig(kind="ray", num_cpus=0.5, batch_size=2))):
            counts = judge_records(tmp_path / "pool.jsonl", out, bad, cfg, None)
    finally:
        lab.delay_s = 0.0
        killer.join()
    assert victims, "no worker was killed"
    assert counts["written"] == 24
    records = read_records(out)
    assert [r["id"] for r in records] == [r["id"] for r in rows]  # once each, in order
    assert all(r["rating"] is not None for r in records)


def test_the_request_cap_holds_across_all_workers(cluster, tmp_path, lab):
    _pool(tmp_path / "pool.jsonl", 20)
    out, bad = tmp_path / "rated.jsonl", tmp_path / "rejects.jsonl"
    ray_executor = RayExecutor(ExecutorConfig(kind="ray", num_cpus=0.5, batch_size=2))
    capped = RateConfig(
        mode="generate", judge=_backend(lab.base_url, concurrency=2, max_requests=7)
    )
    before = lab.count
    with using(ray_executor), pytest.raises(LmmixupError, match="max_requests=7"):
        judge_records(tmp_path / "pool.jsonl", out, bad, capped, None)
    assert lab.count - before == 7  # two workers, one budget
    rated = [r for r in read_records(out) if r["rating"] is not None]
    assert len(rated) == 7
    uncapped = capped.model_copy(
        update={"judge": capped.judge.model_copy(update={"max_requests": None})}
    )
    with using(ray_executor):
        counts = judge_records(tmp_path / "pool.jsonl", out, bad, uncapped, None)
    assert counts["already_done"] == 7
    assert sorted(r["id"] for r in read_records(out)) == sorted(f"p{i}" for i in range(20))
    assert lab.count - before == 20


def test_worker_reports_are_summed_key_by_key():
    merged = merge_reports(
        [
            {"usage": {"requests": 3, "prompt_tokens": 10}, "cache": {"hits": 1, "path": "a"}},
            {"usage": {"requests": 4, "prompt_tokens": 5}, "cache": {"hits": 2, "path": "a"}},
            {"stopped": "request budget spent", "usage": {"requests": 1}},
        ]
    )
    assert merged == {
        "usage": {"requests": 8, "prompt_tokens": 15},
        "cache": {"hits": 3, "path": "a"},
        "stopped": "request budget spent",
    }


def test_an_lmmixup_error_in_a_worker_reaches_the_driver_unwrapped():
    class Wrapped(Exception):  # as Ray's task errors carry the worker's exception
        def __init__(self, cause):
            super().__init__("ray.exceptions.RayTaskError: ...")
            self.cause = cause

    unreachable = LmmixupError("cannot reach the server at http://x/v1: start the server")
    outer = RuntimeError("UserCodeException")
    outer.__cause__ = Wrapped(unreachable)
    assert own_error(outer) is unreachable
    assert own_error(RuntimeError("a bug")) is None


def test_the_config_picks_the_executor():
    assert isinstance(executor_for(ExecutorConfig()), LocalExecutor)
    assert isinstance(executor_for(ExecutorConfig(kind="ray")), RayExecutor)
