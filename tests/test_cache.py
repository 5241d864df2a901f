"""The model-call cache: hits are served from disk, across processes and instances."""

from __future__ import annotations

import sqlite3

import pytest

from lmmixup.backends.base import CachedGenerator, Generation, GenParams, RequestBudgetExhausted
from lmmixup.errors import LmmixupError
from lmmixup.io.cache import CallCache, call_key


class CountingGenerator:
    name = "fake"
    fingerprint = "fake@1"

    def __init__(self, fail_on: str = ""):
        self.calls: list[list] = []
        self.fail_on = fail_on

    def generate(self, prompts, params):
        self.calls.append(prompts)
        return [
            Generation("", "error", error="boom")
            if p[0]["content"] == self.fail_on
            else Generation(f"reply to {p[0]['content']}", "stop", 3)
            for p in prompts
        ]


def _msgs(*texts):
    return [[{"role": "user", "content": t}] for t in texts]


def test_second_call_is_served_from_disk(tmp_path):
    inner = CountingGenerator()
    gen = CachedGenerator(inner, CallCache(tmp_path / "c.sqlite"))
    first = gen.generate(_msgs("a", "b"), GenParams())
    again = CachedGenerator(inner, CallCache(tmp_path / "c.sqlite")).generate(
        _msgs("b", "c", "a"), GenParams()
    )
    assert [g.text for g in again] == ["reply to b", "reply to c", "reply to a"]
    assert inner.calls == [_msgs("a", "b"), _msgs("c")]
    assert [g.text for g in first] == ["reply to a", "reply to b"]
    assert again[0].meta == {"cached": True} and not again[1].meta


def test_parameters_and_model_are_part_of_the_key(tmp_path):
    inner = CountingGenerator()
    gen = CachedGenerator(inner, CallCache(tmp_path / "c.sqlite"))
    gen.generate(_msgs("a"), GenParams(temperature=0.0))
    gen.generate(_msgs("a"), GenParams(temperature=1.0))
    assert len(inner.calls) == 2
    assert call_key("m1", "p", {}) != call_key("m2", "p", {})


def test_failures_are_not_cached(tmp_path):
    inner = CountingGenerator(fail_on="x")
    gen = CachedGenerator(inner, CallCache(tmp_path / "c.sqlite"))
    assert not gen.generate(_msgs("x"), GenParams())[0].ok
    gen.generate(_msgs("x"), GenParams())
    assert len(inner.calls) == 2


class BudgetedGenerator(CountingGenerator):
    """Answers `allowed` prompts in total, then reports the request cap like a paid backend."""

    concurrency = 2

    def __init__(self, allowed: int):
        super().__init__()
        self.allowed = allowed

    def generate(self, prompts, params):
        self.calls.append(prompts)
        results = []
        for prompt in prompts:
            if self.allowed:
                self.allowed -= 1
                results.append(Generation(f"reply to {prompt[0]['content']}", "stop", 3))
            else:
                results.append(None)
        if None in results:
            raise RequestBudgetExhausted(results, limit=3)
        return results


def test_paid_backends_are_called_in_chunks_and_partial_results_are_kept(tmp_path):
    inner = BudgetedGenerator(allowed=3)
    gen = CachedGenerator(inner, CallCache(tmp_path / "c.sqlite"))
    with pytest.raises(RequestBudgetExhausted) as raised:
        gen.generate(_msgs("a", "b", "c", "d", "e"), GenParams())
    assert [len(call) for call in inner.calls] == [2, 2]
    assert [g.text if g else None for g in raised.value.results] == [
        "reply to a",
        "reply to b",
        "reply to c",
        None,
        None,
    ]
    inner.allowed = 10
    again = gen.generate(_msgs("a", "b", "c", "d", "e"), GenParams())
    assert [g.text for g in again] == [f"reply to {x}" for x in "abcde"]
    assert inner.calls[-1] == _msgs("d", "e")


class FullDisk:
    """A database connection on a full disk: every statement fails as SQLite reports it."""

    def execute(self, *args):
        raise sqlite3.OperationalError("database or disk is full")

    executemany = execute


def test_a_cache_error_names_the_cache_file_and_what_to_do(tmp_path):
    cache = CallCache(tmp_path / "c.sqlite")
    cache._db = FullDisk()
    for call in (
        lambda: cache.put("k", 1),
        lambda: cache.put_many({"k": 1}),
        lambda: cache.get("k"),
    ):
        with pytest.raises(
            LmmixupError,
            match=f"call cache {tmp_path / 'c.sqlite'}: database or disk is full; free space",
        ):
            call()
    (tmp_path / "folder.sqlite").mkdir()
    with pytest.raises(LmmixupError, match="folder.sqlite: unable to open database file"):
        CallCache(tmp_path / "folder.sqlite")
