"""The OpenAI-compatible backend against a scripted local server."""

from __future__ import annotations

import dataclasses
import logging
import secrets
import socket
import threading
import time

import pytest
from fake_openai_server import (
    FENCED_JSON,
    GARBAGE,
    GOOD_JSON,
    OUT_OF_RANGE_JSON,
    FakeOpenAIServer,
    Reply,
    error,
    ok,
)

from lmmixup.backends.base import CachedGenerator, GenParams
from lmmixup.backends.openai_chat import (
    NO_KEY,
    OpenAIChatModel,
    RequestBudgetExhausted,
    load,
    read_api_key,
)
from lmmixup.cache import CallCache
from lmmixup.config import BackendConfig
from lmmixup.errors import ConfigError

KEY_ENV = "LMMIXUP_TEST_OPENAI_KEY"
PARAMS = GenParams(max_new_tokens=32)


@pytest.fixture
def server():
    with FakeOpenAIServer() as fake:
        yield fake


@pytest.fixture
def api_key(monkeypatch) -> str:
    key = f"sk-lmmixup-test-{secrets.token_hex(16)}"
    monkeypatch.setenv(KEY_ENV, key)
    return key


def make_model(base_url: str, **overrides) -> OpenAIChatModel:
    """A model with short timeouts and backoff, so the tests don't sleep."""
    settings = {
        "api_key_env": KEY_ENV,
        "concurrency": 4,
        "max_retries": 2,
        "timeout_s": 0.5,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
    } | overrides
    return OpenAIChatModel("fake-model", base_url, **settings)


@pytest.fixture
def model(server, api_key):
    with make_model(server.base_url) as chat_model:
        yield chat_model


def user(content: str) -> list[dict]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}]


def scenario(name: str) -> list[dict]:
    return user(f"Rate this. [[fake:{name}]]")


@pytest.mark.parametrize(
    ("name", "text", "finish_reason", "requests"),
    [
        ("json", GOOD_JSON, "stop", 1),
        ("garbage", GARBAGE, "stop", 1),
        ("fenced-json", FENCED_JSON, "stop", 1),
        ("out-of-range", OUT_OF_RANGE_JSON, "stop", 1),
        ("length", "cut sho", "length", 1),
        ("500-then-ok", GOOD_JSON, "stop", 2),
        ("timeout-then-ok", GOOD_JSON, "stop", 2),
    ],
)
def test_scenarios_that_end_in_a_reply(server, model, name, text, finish_reason, requests):
    [generation] = model.generate([scenario(name)], PARAMS)
    assert generation.ok, generation.error
    assert (generation.text, generation.finish_reason) == (text, finish_reason)
    assert generation.meta["attempts"] == requests
    assert server.count == model.usage["requests"] == requests
    assert model.usage["retries"] == requests - 1
    assert model.usage["failures"] == 0


@pytest.mark.parametrize(
    ("name", "reason", "requests"),
    [("500-forever", "HTTP 500", 3), ("400", "HTTP 400", 1), ("401-echo-key", "HTTP 401", 1)],
)
def test_failures_become_error_generations(server, model, name, reason, requests):
    [generation] = model.generate([scenario(name)], PARAMS)
    assert (generation.text, generation.finish_reason) == ("", "error")
    assert generation.error.startswith(reason)
    assert server.count == model.usage["requests"] == requests
    assert model.usage["failures"] == 1


def test_connection_errors_are_retried_then_recorded(api_key):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with make_model(f"http://127.0.0.1:{port}/v1") as chat_model:
        [generation] = chat_model.generate([user("anyone there?")], PARAMS)
    assert generation.error.startswith("connection error")
    assert chat_model.usage["requests"] == 3
    assert chat_model.usage["retries"] == 2


def test_retry_after_is_honoured(server, model):
    start = time.monotonic()
    [generation] = model.generate([scenario("429-then-ok")], PARAMS)
    assert time.monotonic() - start >= 0.95
    assert generation.text == GOOD_JSON
    assert server.count == 2


def test_retry_after_is_capped(server, api_key):
    server.script("busy", error(429, retry_after=30), ok("done"))
    start = time.monotonic()
    with make_model(server.base_url, retry_after_cap_s=0.05) as chat_model:
        [generation] = chat_model.generate([user("busy")], PARAMS)
    assert generation.text == "done"
    assert time.monotonic() - start < 5


def test_results_keep_input_order_under_bounded_concurrency(server, model):
    prompts = [f"prompt {i}" for i in range(12)]
    for i, prompt in enumerate(prompts):
        # later prompts answer first
        server.script(prompt, Reply(text=f"reply {i}", delay_s=0.01 * (12 - i)))
    generations = model.generate([user(p) for p in prompts], PARAMS)
    assert [g.text for g in generations] == [f"reply {i}" for i in range(12)]
    assert 1 < server.max_in_flight <= 4


def test_generation_params_reach_the_server(server, model):
    params = GenParams(
        max_new_tokens=7,
        temperature=0.3,
        top_p=0.9,
        stop=("\n\n",),
        seed=3,
        repetition_penalty=1.05,
    )
    model.generate([user("a")], params)
    model.generate([user("b")], PARAMS)
    tuned, plain = (server.requests_for(c)[0].body for c in ("a", "b"))
    assert tuned["model"] == "fake-model"
    assert tuned["messages"] == user("a")
    assert {k: tuned[k] for k in ("max_tokens", "temperature", "top_p", "stop", "seed")} == {
        "max_tokens": 7,
        "temperature": 0.3,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "seed": 3,
    }
    assert tuned["repetition_penalty"] == 1.05
    assert "repetition_penalty" not in plain
    assert "stop" not in plain


def test_usage_counts_tokens(server, model):
    [generation] = model.generate([user("one two three")], PARAMS)
    assert generation.text == "echo: one two three"
    assert (generation.prompt_tokens, generation.completion_tokens) == (5, 4)
    assert model.usage["prompt_tokens"] == 5
    assert model.usage["completion_tokens"] == 4


def test_request_cap_stops_with_partial_results(server, api_key):
    with make_model(server.base_url, concurrency=2, max_requests=5) as chat_model:
        with pytest.raises(RequestBudgetExhausted) as raised:
            chat_model.generate([user(f"item {i}") for i in range(8)], PARAMS)
        results = raised.value.results
        assert len(results) == 8
        assert sum(r is not None for r in results) == 5
        assert all(r.text == f"echo: item {i}" for i, r in enumerate(results) if r is not None)
        assert server.count == 5
        with pytest.raises(RequestBudgetExhausted) as again:
            chat_model.generate([user("one more")], PARAMS)
        assert again.value.results == [None]
        assert server.count == chat_model.usage["requests"] == 5


def test_request_cap_counts_retries(server, api_key):
    chat_model = make_model(server.base_url, max_requests=3, max_retries=5)
    with chat_model, pytest.raises(RequestBudgetExhausted) as raised:
        chat_model.generate([scenario("500-forever")], PARAMS)
    assert raised.value.results == [None]
    assert server.count == 3


def test_the_key_is_sent_but_never_shown(server, api_key, caplog, capsys):
    for name in ("openai", "httpx", "httpx2", "httpcore", "httpcore2", "lmmixup"):
        caplog.set_level(logging.DEBUG, logger=name)
    shown: list[str] = []
    with make_model(server.base_url, max_requests=12) as chat_model:
        names = ["json", "400", "401-echo-key", "500-forever", "timeout-then-ok"]
        generations = chat_model.generate([scenario(name) for name in names], PARAMS)
        with pytest.raises(RequestBudgetExhausted) as raised:
            chat_model.generate([user(f"more {i}") for i in range(6)], PARAMS)
        shown += [repr(chat_model), chat_model.fingerprint, str(chat_model.usage)]
    shown += [str(dataclasses.asdict(g)) for g in generations + raised.value.results if g]
    shown += [str(raised.value), repr(raised.value), caplog.text, *capsys.readouterr()]
    assert "HTTP 401: Incorrect API key provided: [api key]" in {g.error for g in generations}
    assert caplog.text  # the DEBUG logs were captured
    assert all(api_key not in text for text in shown)
    assert {r.headers["authorization"] for r in server.requests} == {f"Bearer {api_key}"}


def test_cached_generator_makes_no_second_request(server, model, tmp_path):
    cached = CachedGenerator(model, CallCache(tmp_path / "calls.sqlite"))
    prompts = [user("first"), user("second"), scenario("400")]
    first = cached.generate(prompts, PARAMS)
    seen = server.count
    second = cached.generate(prompts, PARAMS)
    assert [g.text for g in second] == [g.text for g in first]
    assert second[0].meta == {"cached": True}
    assert server.count == seen + 1  # only the failed item is asked again


def test_server_shuts_down_cleanly():
    before = set(threading.enumerate())
    with FakeOpenAIServer() as fake, make_model(fake.base_url, max_retries=0) as chat_model:
        [generation] = chat_model.generate([scenario("timeout-then-ok")], PARAMS)
    assert generation.error.startswith("timeout")
    assert set(threading.enumerate()) <= before


def test_api_key_from_env_then_file_then_placeholder(monkeypatch, tmp_path):
    key_file = tmp_path / "key.txt"
    key_file.write_text("from-file\n")
    monkeypatch.setenv(KEY_ENV, "from-env")
    assert read_api_key(KEY_ENV, str(key_file)) == "from-env"
    monkeypatch.delenv(KEY_ENV)
    assert read_api_key(KEY_ENV, str(key_file)) == "from-file"
    assert read_api_key(KEY_ENV) == NO_KEY
    with pytest.raises(ConfigError, match="cannot read"):
        read_api_key(KEY_ENV, str(tmp_path / "missing.txt"))
    key_file.write_text("  \n")
    with pytest.raises(ConfigError, match="empty"):
        read_api_key(KEY_ENV, str(key_file))


def test_a_local_server_gets_the_placeholder_key(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with make_model(server.base_url) as chat_model:
        chat_model.generate([user("hi")], PARAMS)
    assert server.requests[0].headers["authorization"] == f"Bearer {NO_KEY}"


def test_load_from_config(server, api_key):
    cfg = BackendConfig(backend="openai", model="fake-model", base_url=server.base_url)
    chat_model = load(cfg)
    assert chat_model.fingerprint == f"openai:{server.base_url}:fake-model"
    assert chat_model.generate([], PARAMS) == []
    chat_model.close()
    with pytest.raises(ConfigError, match="model name"):
        load(BackendConfig(backend="openai", base_url=server.base_url))
