"""Faults a real server showed: prompts over its context, token usage of distill, loud ends."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fake_openai_server import FakeOpenAIServer, error, ok
from typer.testing import CliRunner

from lmmixup.cli.app import app
from lmmixup.io.jsonl import write_records
from lmmixup.stages.failures import failure_note, first_error
from lmmixup.workflows.health import check_run

LLAMA_OVERFLOW = (
    "request (900 tokens) exceeds the available context size (512 tokens), try increasing it"
)
POOL = [
    {"id": "m1", "prompt": "What is the capital of France?", "completion": "Paris.", "source": "s"},
    {
        "id": "m2",
        "prompt": "How many live in Paris?",
        "completion": "About 2 million.",
        "source": "s",
    },
]
CLUSTERS = [
    {"cluster_id": "c1", "source": "s", "member_ids": ["m1", "m2"], "size": 2, "cohesion": 0.7}
]
GOOD = (
    "<think>Combine them.</think>\n<answer>\nQ: What is the capital of France, and how many "
    "people live there?\nA: Paris, home to about 2 million people.\n</answer>"
)


class ConstantEmbedder:
    def encode(self, texts, **_):
        return np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (len(texts), 1))


@pytest.fixture(autouse=True)
def _no_embedder(monkeypatch, tmp_path):
    monkeypatch.setattr("lmmixup.backends.embed.load_embedder", lambda *_, **__: ConstantEmbedder())
    monkeypatch.setenv("LMMIXUP_CACHE", str(tmp_path / "cache"))


def test_a_note_names_the_context_fix_or_a_mostly_failed_stage():
    overflow = failure_note("ratings", 1, 10, {"context_overflows": 1}, "HTTP 400")
    assert overflow.message == (
        "1 of 10 ratings failed; 1 requests had a prompt longer than the server's context"
    )
    assert "-np slots" in overflow.advice and "max_member_chars" in overflow.advice
    mostly = failure_note("clusters", 6, 10, {"context_overflows": 0}, "HTTP 404: no model")
    assert mostly.message == "6 of 10 clusters failed (first error: HTTP 404: no model)"
    assert failure_note("clusters", 5, 10, None, "HTTP 500") is None  # a re-run will do


def _server_args(server: FakeOpenAIServer) -> list[str]:
    return ["--backend", "openai", "--base-url", server.base_url, "--model", "m"]


def _distill(tmp_path, server: FakeOpenAIServer):
    write_records(tmp_path / "pool.jsonl", POOL)
    write_records(tmp_path / "clusters.jsonl", CLUSTERS)
    args = ["distill", str(tmp_path / "clusters.jsonl"), "--pool", str(tmp_path / "pool.jsonl")]
    args += ["-o", str(tmp_path / "distilled.jsonl"), *_server_args(server)]
    return CliRunner().invoke(app, args)


def test_distill_records_the_server_s_token_usage(tmp_path):
    with FakeOpenAIServer(default=ok(GOOD)) as server:
        done = _distill(tmp_path, server)
    assert done.exit_code == 0, done.output
    manifest = json.loads((tmp_path / "distilled.manifest.json").read_text())
    usage = manifest["counts"]["distiller_usage"]
    assert usage["requests"] == 1 and usage["completion_tokens"] == len(GOOD.split())


def test_a_distill_prompt_over_the_server_s_context_ends_loudly_and_stays_partial(tmp_path):
    with FakeOpenAIServer(default=error(400, message=LLAMA_OVERFLOW)) as server:
        done = _distill(tmp_path, server)
        assert server.count == 1  # not retried: it cannot help
    assert done.exit_code == 1
    assert "warning: 1 of 1 clusters failed; 1 requests had a prompt longer" in done.stderr
    assert "what to do: " in done.stderr and "distill.max_member_chars" in done.stderr
    manifest = json.loads((tmp_path / "distilled.manifest.json").read_text())
    assert manifest["status"] == "partial"  # the next run retries it
    assert manifest["counts"]["distiller_usage"]["context_overflows"] == 1
    assert LLAMA_OVERFLOW in manifest["counts"]["first_error"]


def test_a_mostly_failed_rating_ends_loudly_with_the_first_error(tmp_path):
    write_records(tmp_path / "pool.jsonl", [{**POOL[0], "id": f"r{i}"} for i in range(3)])
    args = ["rate", str(tmp_path / "pool.jsonl"), "-o", str(tmp_path / "rated.jsonl")]
    with FakeOpenAIServer(default=error(404, message="no such model")) as server:
        done = CliRunner().invoke(app, [*args, *_server_args(server), "--mode", "generate"])
    assert done.exit_code == 1
    assert "3 of 3 ratings failed (first error: judge call failed: HTTP 404" in done.stderr
    assert "wrong model name" in done.stderr


def test_a_rating_prompt_over_the_server_s_context_ends_loudly(tmp_path):
    write_records(tmp_path / "pool.jsonl", POOL[:1])
    args = ["rate", str(tmp_path / "pool.jsonl"), "-o", str(tmp_path / "rated.jsonl")]
    with FakeOpenAIServer(default=error(400, message=LLAMA_OVERFLOW)) as server:
        done = CliRunner().invoke(app, [*args, *_server_args(server), "--mode", "generate"])
    assert done.exit_code == 1
    assert "1 of 1 ratings failed; 2 requests had a prompt longer" in done.stderr  # 2 tries
    counts = json.loads((tmp_path / "rated.manifest.json").read_text())["counts"]
    assert counts["judge"]["judge_usage"]["context_overflows"] == 2


def test_lmmixup_run_warns_about_prompts_over_the_server_s_context(tmp_path):
    stage = tmp_path / "distill"
    stage.mkdir()
    counts = {
        "distilled": 3,
        "reject_reasons": {"generation_error": 2},
        "distiller_usage": {"context_overflows": 2},
    }
    (stage / "manifest.json").write_text(json.dumps({"stage": "distill", "counts": counts}))
    [warning] = [w for w in check_run(tmp_path) if w.code == "model_calls_failed"]
    assert warning.message.startswith("distill: 2 of 5 clusters failed; 2 requests had a")
    assert "-np slots" in warning.advice


def test_the_first_error_is_the_first_reject_that_says_why(tmp_path):
    rejects = tmp_path / "out.rejects.jsonl"
    write_records(
        rejects,
        [
            {"reason": "generation_error", "raw": {"id": "a"}},
            {"reason": "copy", "raw": {"id": "b", "error": "not this reason"}},
            {"reason": "generation_error", "raw": {"id": "c", "error": "HTTP 500"}},
        ],
    )
    assert first_error(rejects, "generation_error") == {"first_error": "HTTP 500"}
    assert first_error(rejects, "drift") == {}
