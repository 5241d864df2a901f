"""The logprob judge behind an OpenAI-compatible server, against a scripted server."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fake_openai_server import FakeOpenAIServer, Reply, error, ok, scores

from lmmixup.backends.openai_chat import OpenAIChatModel
from lmmixup.backends.openai_replies import NO_LOGPROBS, top_logprobs
from lmmixup.config import BackendConfig, RateConfig
from lmmixup.io.cache import CallCache
from lmmixup.method.rubric import build_rubric_logprob_prompt
from lmmixup.stages.judge import BudgetStop, load_judge_fn
from lmmixup.stages.judge_scores import logprob_rating
from lmmixup.stages.judge_server import PROBE_PAIR, TOP_K

PREFIX = '{"overall":'


def _content(prompt: str, completion: str = "An answer.") -> str:
    """The last user message the judge sends for this pair."""
    return build_rubric_logprob_prompt(prompt, completion).messages[-1]["content"]


def _record(record_id: str, prompt: str) -> dict:
    return {"id": record_id, "prompt": prompt, "completion": "An answer.", "source": "t"}


def _cfg(server: FakeOpenAIServer, mode: str = "logprob", **judge) -> RateConfig:
    settings = {"backend": "openai", "base_url": server.base_url, "model": "judge-model"}
    settings |= {"max_retries": 0, "timeout_s": 5} | judge
    return RateConfig(mode=mode, judge=BackendConfig(**settings))


def _judge(cfg: RateConfig, cache: CallCache | None = None, stop: BudgetStop | None = None):
    notes: dict = {}
    fn, model = load_judge_fn(cfg, cache, stop or BudgetStop(), 0, notes)
    return fn, model, notes


def _expected(probs: dict[int, float]) -> dict:
    row = np.zeros(10)
    for value, p in probs.items():
        row[value - 1] += p
    return logprob_rating(row, "judge-model")


def test_the_server_s_top_logprobs_give_the_local_judge_s_rating():
    alternatives = {"7": math.log(0.5), " 7": math.log(0.1), "8": math.log(0.2), "x": -1.0}
    with FakeOpenAIServer() as server:
        server.script(_content("Q"), scores(alternatives))
        judge, model, notes = _judge(_cfg(server))
        [out] = judge([_record("a", "Q")])
    assert notes == {"mode": "logprob"}
    # "7" and " 7" both count for 7; "x" is no score
    assert out["rating"] == _expected({7: 0.6, 8: 0.2})
    [request] = server.requests
    body = request.body
    assert body["logprobs"] is True and body["top_logprobs"] == TOP_K
    assert body["max_tokens"] == 1 and body["temperature"] == 0.0
    assert body["messages"][-1] == {"role": "assistant", "content": PREFIX}


def test_an_echoed_prefix_is_read_past():
    alternatives = {"6": math.log(0.7), "5": math.log(0.2)}
    with FakeOpenAIServer() as server:
        server.script(_content("Q"), scores(alternatives, echo=True))
        judge, _, _ = _judge(_cfg(server))
        [out] = judge([_record("a", "Q")])
    assert out["rating"] == _expected({6: 0.7, 5: 0.2})


def test_a_score_outside_the_top_k_counts_as_zero():
    listed = {f"tok{i}": -0.5 - i / 100 for i in range(TOP_K)} | {"9": -0.1}
    with FakeOpenAIServer() as server:
        server.script(_content("Q"), scores(listed))  # "9" is the 21st: the server drops it
        judge, _, _ = _judge(_cfg(server))
        [out] = judge([_record("a", "Q")])
    assert out["rating"] is None
    assert "only 0.0% probability on a score" in out["rating_error"]


def test_a_likely_1_is_read_again_for_a_10():
    with FakeOpenAIServer() as server:
        server.script(
            _content("Q"),
            scores({"1": math.log(0.6), "9": math.log(0.3)}),
            scores({"0": math.log(0.75), "}": math.log(0.25)}),
        )
        judge, _, _ = _judge(_cfg(server))
        [out] = judge([_record("a", "Q")])
        first, second = server.requests
    assert second.body["messages"][-1]["content"] == PREFIX + "1"
    assert first.body["messages"][:-1] == second.body["messages"][:-1]
    assert out["rating"] == _expected({10: 0.45, 1: 0.15, 9: 0.3})


def test_a_reply_without_logprobs_is_a_recorded_failure():
    with FakeOpenAIServer() as server:
        server.script(_content("Q"), ok("7"))
        judge, _, _ = _judge(_cfg(server))
        [out] = judge([_record("a", "Q")])
    assert out["rating"] is None and out["rating_error"] == NO_LOGPROBS
    assert "--mode generate" in NO_LOGPROBS


def test_a_failed_request_is_a_recorded_failure_naming_the_cause_and_not_cached(tmp_path):
    message = "This model's maximum context length is 512 tokens. However, you requested 900"
    cache = CallCache(tmp_path / "calls.sqlite")
    with FakeOpenAIServer() as server:
        server.script(_content("Q"), error(400, message=message), scores({"4": -0.1}))
        judge, model, _ = _judge(_cfg(server), cache)
        [failed] = judge([_record("a", "Q")])
        [again] = judge([_record("a", "Q")])  # asked again: a failure is never cached
        [cached] = judge([_record("a", "Q")])
        assert server.count == 2
    assert failed["rating"] is None and message in failed["rating_error"]
    assert "raise the server's context" in failed["rating_error"]
    assert model.usage["context_overflows"] == 1
    assert again["rating"]["overall"] == 4 and cached["rating"] == again["rating"]


def test_a_spent_request_cap_stops_and_records_the_unsent():
    stop = BudgetStop()
    with FakeOpenAIServer() as server:
        for name in "ab":
            server.script(_content(name), scores({"5": -0.1}))
        judge, _, _ = _judge(_cfg(server, max_requests=1, concurrency=1), stop=stop)
        out = judge([_record("a", "a"), _record("b", "b")])
    assert [r["rating"] is None for r in out] == [False, True]
    assert "request cap" in out[1]["rating_error"]
    assert stop() and "max_requests=1" in stop.reason


def test_auto_probes_the_server_once_and_uses_logprob_when_it_gives_them():
    with FakeOpenAIServer() as server:
        server.script(_content(*PROBE_PAIR), scores({"8": -0.1}))
        server.script(_content("Q"), scores({"3": -0.1}))
        judge, _, notes = _judge(_cfg(server, mode="auto"))
        [out] = judge([_record("a", "Q")])
    assert notes == {"mode": "logprob"}
    assert out["rating"]["method"] == "judge-logprob" and out["rating"]["overall"] == 3


@pytest.mark.parametrize(
    ("probe_reply", "why"),
    [
        (ok("8"), "gave no logprobs"),
        (scores({"{": -0.01, "8": -6.0}), "may not continue a pre-filled assistant turn"),
    ],
)
def test_auto_falls_back_to_generate_and_says_why(probe_reply: Reply, why: str):
    with FakeOpenAIServer() as server:
        server.script(_content(*PROBE_PAIR), probe_reply)
        judge, _, notes = _judge(_cfg(server, mode="auto"))
        [out] = judge([_record("a", "Q [[fake:json]]")])
    assert notes["mode"] == "generate" and why in notes["mode_note"]
    assert out["rating"]["method"] == "judge-generate"


def test_the_same_token_listed_twice_adds_up():
    entry = {
        "token": "7",
        "logprob": math.log(0.3),
        "top_logprobs": [
            {"token": "7", "logprob": math.log(0.3)},
            {"token": "7", "logprob": math.log(0.2)},
        ],
    }
    found = top_logprobs({"content": [entry]}, PREFIX)
    assert found == {"7": pytest.approx(math.log(0.5))}
    assert top_logprobs(None, PREFIX) == NO_LOGPROBS


def test_next_token_top_logprobs_keeps_input_order():
    with FakeOpenAIServer() as server:
        for digit in "123":
            server.script(digit, scores({digit: -0.1}))
        with OpenAIChatModel("m", server.base_url, concurrency=3) as model:
            found = model.next_token_top_logprobs(
                [[{"role": "user", "content": d}] for d in "123"], PREFIX, 5
            )
    assert [list(reading) for reading in found] == [["1"], ["2"], ["3"]]
