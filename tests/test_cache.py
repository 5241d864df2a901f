"""The model-call cache: hits are served from disk, across processes and instances."""

from __future__ import annotations

from lmmixup.backends.base import CachedGenerator, Generation, GenParams
from lmmixup.cache import CallCache, call_key


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
