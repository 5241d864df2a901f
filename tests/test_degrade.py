"""Degradation operators: each removes information or adds noise as named, seeded, never a no-op."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmmixup.mixture.degrade import (
    LLM_DAMAGE,
    OPERATORS,
    bare_answer,
    casing,
    degrade_pair,
    drop_sentences,
    drop_steps,
    duplicate,
    llm_degrade_messages,
    parse_llm_degradation,
    sentences,
    truncate,
    typos,
    vague,
    whitespace,
)

PROSE = (
    "Paris is the capital of France. It has about 2,100,000 inhabitants. "
    "The Seine runs through the city. Many visitors come to see the Louvre every year."
)
WORKED = "Tom has 3 + 4 = 7 apples.\nHe gives away 2, so 7 - 2 = 5 remain.\n#### 5"

WORDS = st.sampled_from(["apple", "Tom", "runs", "the", "42", "3.5", "city", "Paris", "x", "ok."])
SENTENCE = st.lists(WORDS, min_size=1, max_size=8).map(lambda ws: " ".join(ws) + ".")
STRUCTURED = st.lists(SENTENCE, min_size=1, max_size=6).flatmap(
    lambda ss: st.sampled_from([" ", "\n", "  \n"]).map(lambda sep: sep.join(ss))
)
ANY_TEXT = st.text(max_size=200) | STRUCTURED


def _words(text: str) -> list[str]:
    return text.split()


@pytest.mark.parametrize("name", list(OPERATORS))
@settings(max_examples=60, deadline=None)
@given(text=ANY_TEXT, seed=st.integers(0, 2**16))
def test_operator_never_raises_and_never_returns_its_input(name, text, seed):
    result = OPERATORS[name].apply(text, random.Random(seed))
    assert result is None or (result != text and result.strip())


@pytest.mark.parametrize("name", list(OPERATORS))
def test_operator_is_deterministic_per_seed(name):
    text = f"{PROSE}\n{WORKED}"
    outputs = {OPERATORS[name].apply(text, random.Random(7)) for _ in range(3)}
    assert len(outputs) == 1 and None not in outputs
    others = {OPERATORS[name].apply(text, random.Random(seed)) for seed in range(20)}
    assert len(others) > 1 or name == "bare_answer"  # always the `#### N` answer


def test_operator_kinds():
    removal = {name for name, op in OPERATORS.items() if op.kind == "removal"}
    assert removal == {"drop_sentences", "drop_steps", "truncate", "bare_answer", "vague"}
    assert set(OPERATORS) - removal == {"typos", "casing", "whitespace", "duplicate"}


@pytest.mark.parametrize("seed", range(10))
def test_drop_sentences_keeps_a_strict_subset_in_order(seed):
    result = drop_sentences(PROSE, random.Random(seed))
    kept = [s.strip() for s in sentences(result)]
    original = [s.strip() for s in sentences(PROSE)]
    assert 1 <= len(kept) < len(original)
    assert kept == [s for s in original if s in kept]


@pytest.mark.parametrize("seed", range(10))
def test_drop_steps_keeps_the_conclusion(seed):
    result = drop_steps(WORKED, random.Random(seed))
    lines = result.splitlines()
    assert lines[-1] == "#### 5" and len(lines) < 3
    assert drop_steps("one line only", random.Random(seed)) is None


@pytest.mark.parametrize("seed", range(10))
def test_truncate_returns_a_shorter_prefix(seed):
    result = truncate(PROSE, random.Random(seed))
    assert PROSE.startswith(result) and len(_words(result)) < len(_words(PROSE))
    assert truncate("too few words", random.Random(seed)) is None


def test_bare_answer_keeps_only_the_final_answer():
    rng = random.Random(0)
    assert bare_answer(WORKED, rng) == "5"
    assert bare_answer(PROSE, rng) == "Paris is the capital of France."
    assert bare_answer("One sentence only.", rng) is None


@pytest.mark.parametrize("seed", range(10))
def test_vague_replaces_numbers_and_names(seed):
    result = vague(PROSE, random.Random(seed))
    specifics = r"\d|Paris|France|Seine|Louvre"
    assert len(re.findall(specifics, result)) < len(re.findall(specifics, PROSE))
    assert vague("nothing specific here at all", random.Random(seed)) is None


@pytest.mark.parametrize("seed", range(10))
def test_typos_misspell_a_few_words(seed):
    result = typos(PROSE, random.Random(seed))
    before, after = _words(PROSE), _words(result)
    changed = sum(a != b for a, b in zip(before, after, strict=True))
    assert len(after) == len(before) and 1 <= changed <= max(2, len(before) // 5)


@pytest.mark.parametrize("seed", range(10))
def test_noise_keeps_the_content(seed):
    rng = random.Random(seed)
    assert casing(PROSE, rng).lower() == PROSE.lower()
    assert "".join(whitespace(PROSE, rng).split()) == "".join(PROSE.split())
    doubled = duplicate(PROSE, rng)
    assert len(doubled) > len(PROSE) and set(_words(doubled)) == set(_words(PROSE))


def test_noise_refuses_what_it_cannot_change():
    rng = random.Random(0)
    assert casing("123 456", rng) is None
    assert whitespace("single", rng) is None
    assert typos("a b c 12", rng) is None


@settings(max_examples=80, deadline=None)
@given(prompt=ANY_TEXT, completion=ANY_TEXT, seed=st.integers(0, 2**16), most=st.integers(1, 3))
def test_degrade_pair_differs_and_names_its_operators(prompt, completion, seed, most):
    variant = degrade_pair(prompt, completion, random.Random(seed), max_operators=most)
    if variant is None:
        return
    assert (variant.prompt, variant.completion) != (prompt, completion)
    assert 1 <= len(variant.operators) <= most
    assert len(set(variant.operators)) == len(variant.operators)
    assert set(variant.operators) <= set(OPERATORS)


@pytest.mark.parametrize("seed", range(20))
def test_degrade_pair_starts_with_a_removal_and_is_seeded(seed):
    first = degrade_pair("How many apples does Tom have?", WORKED, random.Random(seed))
    again = degrade_pair("How many apples does Tom have?", WORKED, random.Random(seed))
    assert first == again
    assert OPERATORS[first.operators[0]].kind == "removal"


def test_degrade_pair_uses_only_the_named_operators():
    variant = degrade_pair("Q?", WORKED, random.Random(0), operators=["typos"], max_operators=3)
    assert variant.operators == ("typos",)
    assert degrade_pair("Q?", "12", random.Random(0), operators=["bare_answer"]) is None


def test_llm_prompt_and_reply():
    messages = llm_degrade_messages("How many apples?", WORKED, 3)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "Q: How many apples?\nA: Tom has" in messages[1]["content"]
    assert LLM_DAMAGE[3] in messages[1]["content"]
    assert messages != llm_degrade_messages("How many apples?", WORKED, 3 + len(LLM_DAMAGE))
    assert parse_llm_degradation("Q: apples?\nA: some") == ("apples?", "some")
    assert parse_llm_degradation("I cannot do that.") is None
