"""The OpenAI-compatible backend against a scripted local server."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
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
    ServerUnreachable,
    load,
    read_api_key,
)
from lmmixup.backends.openai_replies import vendor_args
from lmmixup.config import BackendConfig
from lmmixup.errors import ConfigError, LmmixupError
from lmmixup.io.cache import CallCache, call_key

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
        ("json", GOOD_JSON, "eos", 1),
        ("garbage", GARBAGE, "eos", 1),
        ("fenced-json", FENCED_JSON, "eos", 1),
        ("out-of-range", OUT_OF_RANGE_JSON, "eos", 1),
        ("length", "cut sho", "length", 1),
        ("500-then-ok", GOOD_JSON, "eos", 2),
        ("timeout-then-ok", GOOD_JSON, "eos", 2),
        ("drop-then-ok", GOOD_JSON, "eos", 2),
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
    [
        ("500-forever", "HTTP 500", 3),
        ("400", "HTTP 400", 1),
        ("401-echo-key", "HTTP 401", 1),
        ("drop-forever", "connection error", 3),  # a live server that breaks the connection
    ],
)
def test_failures_become_error_generations(server, model, name, reason, requests):
    [generation] = model.generate([scenario(name)], PARAMS)
    assert (generation.text, generation.finish_reason) == ("", "error")
    assert generation.error.startswith(reason)
    assert server.count == model.usage["requests"] == requests
    assert model.usage["failures"] == 1


def dead_url() -> str:
    """The URL of a port nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_an_unreachable_server_stops_the_call_within_seconds(api_key):
    url = dead_url()
    # the real backoff (1 s, doubling) and retries: without the stop this takes minutes
    chat_model = make_model(url, max_retries=5, backoff_base_s=1.0, backoff_max_s=30.0)
    start = time.monotonic()
    with chat_model, pytest.raises(ServerUnreachable) as raised:
        chat_model.generate([user(f"anyone there? {i}") for i in range(20)], PARAMS)
    assert time.monotonic() - start < 10
    assert isinstance(raised.value, LmmixupError)  # the CLI prints it and exits 2
    message = str(raised.value)
    assert url in message and "Connection refused" in message and "start the server" in message
    assert chat_model.usage["requests"] < 20
    with pytest.raises(ServerUnreachable):  # and it stays given up
        chat_model.generate([user("still there?")], PARAMS)


def test_the_cli_names_an_unreachable_server_and_exits_2(tmp_path, api_key):
    pool = tmp_path / "pool.jsonl"
    pool.write_text(
        "".join(
            json.dumps({"id": f"p{i}", "prompt": f"q{i}", "completion": f"a{i}", "source": "s"})
            + "\n"
            for i in range(20)
        )
    )
    url = dead_url()
    args = ["rate", str(pool), "-o", str(tmp_path / "rated.jsonl"), "--backend", "openai"]
    args += ["--base-url", url, "--model", "m", "--mode", "generate"]
    env = {**os.environ, "LMMIXUP_CACHE": str(tmp_path / "cache")}
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "lmmixup.cli", *args], capture_output=True, text=True, env=env
    )
    assert time.monotonic() - start < 60  # imports included; minutes before the stop
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: cannot reach the server at " + url)
    assert "Traceback" not in done.stderr and "ConnectError" not in done.stderr


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
        max_new_tokens=7, temperature=0.3, top_p=0.9, seed=3, repetition_penalty=1.05
    )
    model.generate([user("a")], params)
    model.generate([user("b")], PARAMS)
    tuned, plain = (server.requests_for(c)[0].body for c in ("a", "b"))
    assert tuned["model"] == "fake-model"
    assert tuned["messages"] == user("a")
    assert {k: tuned[k] for k in ("max_tokens", "temperature", "top_p", "seed")} == {
        "max_tokens": 7,
        "temperature": 0.3,
        "top_p": 0.9,
        "seed": 3,
    }
    # vLLM reads repetition_penalty, llama.cpp repeat_penalty: both are sent
    assert tuned["repetition_penalty"] == tuned["repeat_penalty"] == 1.05
    assert "repetition_penalty" not in plain and "repeat_penalty" not in plain


def test_openai_s_own_api_gets_no_field_it_would_refuse():
    assert vendor_args("http://localhost:8080/v1", 1.05, True) == {
        "repetition_penalty": 1.05,
        "repeat_penalty": 1.05,
        "continue_final_message": True,
        "add_generation_prompt": False,
    }
    assert vendor_args("https://api.openai.com/v1", 1.0, True) == {}
    with pytest.raises(ConfigError, match="repetition_penalty=1.05: OpenAI's API has no"):
        vendor_args("https://api.openai.com/v1", 1.05, False)


@pytest.mark.parametrize("echo", [True, False], ids=["llama.cpp echoes", "vLLM does not"])
def test_a_pre_filled_reply_reads_the_same_whether_the_server_echoes_the_prefix(
    server, model, echo
):
    server.script("rate", Reply(text="7}", echo=echo))
    [reply] = model.generate([user("rate")], GenParams(assistant_prefix='{"overall":'))
    assert reply.text == '{"overall":7}'
    [request] = server.requests
    assert request.body["messages"][-1] == {"role": "assistant", "content": '{"overall":'}
    assert request.body["continue_final_message"] is True


def test_a_prompt_longer_than_the_server_s_context_is_not_retried_and_names_the_fix(server, model):
    [reply] = model.generate([scenario("context-400")], PARAMS)
    assert server.count == 1  # retrying cannot help
    assert "exceeds the available context size" in reply.error
    assert "-c, which is split across its -np slots" in reply.error
    assert "distill.max_member_chars" in reply.error
    assert model.usage["context_overflows"] == model.usage["failures"] == 1


# ---------------------------------------------------------------------------- stop string or EOS

ANSWER_PARAMS = GenParams(max_new_tokens=64, stop=("</answer>", "\n\nQ:"))
OPEN = "<think>t</think><answer>Q: x\nA: y"


@pytest.mark.parametrize(
    ("names_stop", "reply", "ending"),
    [
        # (a) vLLM, ended at end-of-sequence: stop_reason null
        (True, ok(OPEN), ("eos", None, OPEN)),
        # (b) vLLM, ended on the stop string: the text without it, stop_reason naming it
        (True, ok(OPEN, stop_reason="</answer>"), ("stop", "</answer>", OPEN)),
        # vLLM, ended on one of the model's end-of-sequence token ids
        (True, ok(OPEN, stop_reason=2), ("eos", None, OPEN)),
        # vLLM, ended on a stop string the request did not ask for
        (True, ok(OPEN, stop_reason="<|user|>"), ("eos", None, OPEN)),
        # (c) no stop_reason: no stop strings sent; the text is cut here
        (False, ok(OPEN), ("eos", None, OPEN)),
        (False, ok(OPEN + "</answer>\nand more"), ("stop", "</answer>", OPEN)),
        (False, ok(OPEN + "\n\nQ: next", finish_reason="length"), ("stop", "\n\nQ:", OPEN)),
        (False, ok(OPEN + " and on", finish_reason="length"), ("length", None, OPEN + " and on")),
    ],
)
def test_a_reply_says_whether_a_stop_string_or_the_model_ended_it(
    api_key, names_stop, reply, ending
):
    with FakeOpenAIServer(stop_reason=names_stop) as server:
        server.script("merge", reply)
        with make_model(server.base_url) as chat_model:
            [generation] = chat_model.generate([user("merge")], ANSWER_PARAMS)
    assert (generation.finish_reason, generation.stop_string, generation.text) == ending
    assert "stop" not in server.requests[0].body  # the server's ways are not known yet


def test_stop_strings_are_sent_once_the_server_names_its_stops(api_key):
    with FakeOpenAIServer(stop_reason=True) as server:
        for content in ("one", "two"):
            server.script(content, ok(OPEN + "</answer>\nand more"))
        with make_model(server.base_url) as chat_model:
            [first] = chat_model.generate([user("one")], ANSWER_PARAMS)
            [second] = chat_model.generate([user("two")], ANSWER_PARAMS)
    assert "stop" not in server.requests_for("one")[0].body
    assert server.requests_for("two")[0].body["stop"] == ["</answer>", "\n\nQ:"]
    for generation in (first, second):  # cut here, then by the server
        assert (generation.text, generation.finish_reason) == (OPEN, "stop")
        assert generation.stop_string == "</answer>"


def test_a_reply_to_stop_strings_that_does_not_name_its_stop_is_asked_again(api_key):
    with FakeOpenAIServer(stop_reason=True) as server:
        server.script("two", ok(OPEN + "</answer>"))
        with make_model(server.base_url) as chat_model:
            chat_model.generate([user("one")], ANSWER_PARAMS)
            server.stop_reason = False  # e.g. another server behind the same URL
            [generation] = chat_model.generate([user("two")], ANSWER_PARAMS)
    assert ["stop" in request.body for request in server.requests_for("two")] == [True, False]
    assert (generation.text, generation.finish_reason) == (OPEN, "stop")


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
    for name in ("lmmixup", "lmmixup.http", "aiohttp"):  # the CLI sets lmmixup.http's own level
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


def test_replies_cached_before_stop_strings_were_told_apart(server, model, tmp_path):
    cache = CallCache(tmp_path / "calls.sqlite")
    old = {"text": "old", "finish_reason": "stop", "completion_tokens": 1, "prompt_tokens": 2}
    for content, params in (("judge", PARAMS), ("merge", ANSWER_PARAMS)):
        key = call_key(model.fingerprint, user(content), dataclasses.asdict(params))
        cache.put(key, {**old, "error": None})
    cached = CachedGenerator(model, cache)
    [judged] = cached.generate([user("judge")], PARAMS)
    [merged] = cached.generate([user("merge")], ANSWER_PARAMS)
    # without stop strings, "stop" was end-of-sequence; with them it is unknown: asked again
    assert (judged.text, judged.finish_reason, judged.meta) == ("old", "eos", {"cached": True})
    assert (merged.text, merged.finish_reason) == ("echo: merge", "eos")
    assert server.count == 1
    [again] = cached.generate([user("merge")], ANSWER_PARAMS)
    assert (again.text, again.meta, server.count) == ("echo: merge", {"cached": True}, 1)


@pytest.fixture
def cli_logging(monkeypatch, caplog):
    """The CLI's logging set-up, undone after the test; root at INFO, as the CLI's default."""
    from lmmixup.cli import app as cli

    monkeypatch.setitem(cli._state, "verbose", False)
    names = ["", *cli.QUIET_LOGGERS]
    levels = {name: logging.getLogger(name).level for name in names}
    caplog.set_level(logging.INFO)
    yield cli.main_options
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize(("verbose", "lines"), [(False, 0), (True, 2)])
def test_requests_are_logged_one_line_each_only_with_verbose(
    server, model, caplog, cli_logging, verbose, lines
):
    cli_logging(verbose=verbose, quiet=False)
    model.generate([user("a"), user("b")], PARAMS)
    assert sum("HTTP Request" in record.getMessage() for record in caplog.records) == lines


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
