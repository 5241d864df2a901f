"""lmmixup against a real llama.cpp server (`llama-server`) serving the bundled SmolLM2 GGUF.

Opt-in: skipped unless LMMIXUP_LLAMA_SERVER names a llama-server binary. `make test-servers`
builds one (scripts/build_llama_server.sh, ~20 minutes the first time) and runs this module.
Every server started here is stopped (terminate, then kill) whatever the test does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from llama_process import llama_server

from lmmixup.backends.base import GenParams
from lmmixup.backends.openai_chat import OpenAIChatModel
from lmmixup.io.jsonl import read_records, write_records

BINARY = os.environ.get("LMMIXUP_LLAMA_SERVER", "")
pytestmark = pytest.mark.skipif(
    not (BINARY and os.access(BINARY, os.X_OK)),
    reason="set LMMIXUP_LLAMA_SERVER to a llama-server binary "
    "(`make test-servers` builds one with scripts/build_llama_server.sh and runs these tests)",
)
PREFIX = '{"overall":'
POOL = [
    {"id": "a", "prompt": "What is the capital of France?", "completion": "Paris.", "source": "s"},
    {
        "id": "b",
        "prompt": "How many people live in Paris?",
        "completion": "About 2 million.",
        "source": "s",
    },
    {"id": "c", "prompt": "Name a prime number.", "completion": "7 is prime.", "source": "s"},
    {"id": "d", "prompt": "Is 9 a prime number?", "completion": "Yes, 9 is prime.", "source": "s"},
    {"id": "e", "prompt": "Write a haiku about rain.", "completion": "ok", "source": "s"},
    {"id": "f", "prompt": "Spell the word cat.", "completion": "C-A-T", "source": "s"},
]
CLUSTERS = [
    {"cluster_id": "c1", "source": "s", "member_ids": ["a", "b"], "size": 2, "cohesion": 0.7},
    {"cluster_id": "c2", "source": "s", "member_ids": ["c", "d"], "size": 2, "cohesion": 0.6},
]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    with llama_server(BINARY, tmp_path_factory.mktemp("llama"), ctx=4096, slots=2) as url:
        yield url


def lmmixup(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmmixup.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def _rate(tmp: Path, url: str, name: str, *extra: str) -> subprocess.CompletedProcess:
    args = ["rate", str(tmp / "pool.jsonl"), "-o", str(tmp / f"{name}.jsonl")]
    args += ["--backend", "openai", "--base-url", url, "--model", "smollm2", "--concurrency", "2"]
    return lmmixup(*args, *extra)


def _manifest(path: Path) -> dict:
    return json.loads(path.with_suffix(".manifest.json").read_text())


def test_rate_in_logprob_auto_and_generate_mode(server, tmp_path):
    write_records(tmp_path / "pool.jsonl", POOL)
    logprob = _rate(tmp_path, server, "logprob", "--mode", "logprob")
    assert logprob.returncode == 0, logprob.stderr
    rated = read_records(tmp_path / "logprob.jsonl")
    assert all(r["rating"]["method"] == "judge-logprob" for r in rated)
    assert all(r["rating"]["score_mass"] > 0.5 for r in rated)  # prefill continued
    assert _manifest(tmp_path / "logprob.jsonl")["counts"]["judge"]["judge_mode"] == "logprob"

    auto = _rate(tmp_path, server, "auto")
    assert auto.returncode == 0, auto.stderr
    assert _manifest(tmp_path / "auto.jsonl")["counts"]["judge"]["judge_mode"] == "logprob"

    generate = _rate(tmp_path, server, "generate", "--mode", "generate")
    assert generate.returncode in (0, 1), generate.stderr  # 1: most replies were unusable
    records = read_records(tmp_path / "generate.jsonl")
    assert len(records) == len(POOL)
    assert all(r["rating"] is not None or r["rating_error"] for r in records)


def test_llama_cpp_echoes_the_prefilled_prefix_and_the_client_keeps_it_once(
    server, record_property
):
    messages = [{"role": "user", "content": "Rate 1-10: Paris is in France."}]
    request = urllib.request.Request(
        f"{server}/chat/completions",
        data=json.dumps(
            {
                "model": "smollm2",
                "messages": [*messages, {"role": "assistant", "content": PREFIX}],
                "max_tokens": 4,
                "temperature": 0,
            }
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        raw = json.load(response)
    echoed = (raw["choices"][0]["message"]["content"] or "").startswith(PREFIX)
    with OpenAIChatModel("smollm2", server) as model:
        [reply] = model.generate([messages], GenParams(max_new_tokens=4, assistant_prefix=PREFIX))
    assert reply.ok and reply.text.startswith(PREFIX)
    assert not reply.text[len(PREFIX) :].lstrip().startswith(PREFIX)
    record_property("llama_cpp_echoes_prefix", echoed)


def test_repeat_penalty_reaches_llama_cpp(server):
    messages = [
        {"role": "user", "content": "Repeat the word 'go' fifty times, separated by spaces."}
    ]
    texts = []
    with OpenAIChatModel("smollm2", server) as model:
        for penalty in (1.0, 1.5):
            params = GenParams(max_new_tokens=48, repetition_penalty=penalty)
            [reply] = model.generate([messages], params)
            assert reply.ok, reply.error
            texts.append(reply.text)
    assert texts[0] != texts[1]  # greedy output: only the penalty differs


def test_distill_against_llama_cpp_records_usage(server, tmp_path):
    write_records(tmp_path / "pool.jsonl", POOL)
    write_records(tmp_path / "clusters.jsonl", CLUSTERS)
    out = tmp_path / "distilled.jsonl"
    done = lmmixup(
        "distill",
        str(tmp_path / "clusters.jsonl"),
        "--pool",
        str(tmp_path / "pool.jsonl"),
        "-o",
        str(out),
        *("--backend", "openai", "--base-url", server, "--model", "smollm2"),
    )
    assert done.returncode in (0, 1), done.stderr  # 1: the distiller failed on most clusters
    usage = _manifest(out)["counts"]["distiller_usage"]
    assert usage["requests"] >= len(CLUSTERS) and usage["completion_tokens"] > 0


def test_a_prompt_over_the_slot_s_context_ends_loudly(tmp_path):
    write_records(tmp_path / "pool.jsonl", POOL[:2])
    with llama_server(BINARY, tmp_path, ctx=256, slots=1) as url:  # the rubric alone is longer
        done = _rate(tmp_path, url, "small", "--mode", "generate")
    assert done.returncode == 1
    assert "requests had a prompt longer than the server's context" in done.stderr
    assert "-np slots" in done.stderr
    manifest = _manifest(tmp_path / "small.jsonl")
    assert manifest["status"] == "partial"
    assert manifest["counts"]["judge"]["judge_usage"]["context_overflows"] >= 2
