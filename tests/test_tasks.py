"""Task types: answer layouts and the patterns that recognise them."""

import pytest

from lmmixup.method.tasks import TASK_FORMATS, matches_task_pattern, task_format, task_parts
from lmmixup.records import TASK_TYPES

MCQ = "Q: Which planet is largest?\nA) Mars\nB) Jupiter\nC) Venus\nD) Earth\nAnswer: B"


def test_every_task_type_has_a_format_with_a_layout():
    assert tuple(TASK_FORMATS) == TASK_TYPES
    assert all(task_format(name).layout for name in TASK_TYPES)


def test_unknown_task_type_is_a_value_error_naming_the_known_ones():
    with pytest.raises(ValueError, match="qa, mcq"):
        matches_task_pattern("Q: x A: y", "essay")


@pytest.mark.parametrize(
    ("task_type", "answer"),
    [
        ("qa", "Q: What is 2+2?\nA: 4"),
        ("qa", "q : What is 2+2?   a: Four."),
        ("qa", "Here it is.\nQ: Why?\n\nA: Because."),
        ("mcq", MCQ),
        ("mcq", "q: Pick one. (a) x (b) y (c) z (d) w answer: (c)"),
        ("tfq", "Water boils at 100 C at sea level.\nAnswer: True"),
        ("tfq", "Statement: The moon is a star. answer: false, it reflects light."),
        ("cs", "C: Astronomy\nS: Jupiter is the largest planet."),
        ("paragraph", "Any text at all."),
    ],
)
def test_matching_answers(task_type, answer):
    assert matches_task_pattern(answer, task_type)


@pytest.mark.parametrize(
    ("task_type", "answer"),
    [
        ("qa", "A: 4\nQ: What is 2+2?"),  # wrong order
        ("qa", "Q: What is 2+2?"),  # no answer
        ("qa", "Q:\nA: 4"),  # blank question
        ("qa", "Q: What is 2+2?\nA:   "),  # blank answer
        ("qa", "FAQ: What is 2+2? A: 4"),  # `Q:` inside a word
        ("mcq", "Q: Pick.\nA) x\nB) y\nC) z\nAnswer: A"),  # option D missing
        ("mcq", "Q: Pick.\nB) y\nA) x\nC) z\nD) w\nAnswer: A"),  # options out of order
        ("mcq", "Answer: B\nQ: Pick.\nA) x\nB) y\nC) z\nD) w"),  # answer first
        ("tfq", "The sky is green.\nAnswer: Maybe"),
        ("tfq", "Answer: True"),  # no statement
        ("tfq", "True. The sky is blue."),
        ("cs", "S: Jupiter is big.\nC: Astronomy"),
        ("cs", "C: Astronomy"),
        ("paragraph", "  \n "),
    ],
)
def test_non_matching_answers(task_type, answer):
    assert not matches_task_pattern(answer, task_type)


def test_parts_are_stripped_and_split_at_the_first_labels():
    assert task_parts("Q:  Why?  \nA: Because.\nA: again", "qa") == {
        "prompt": "Why?",
        "completion": "Because.\nA: again",
    }
    parts = task_parts(MCQ, "mcq")
    assert parts == {
        "prompt": "Which planet is largest?\nA) Mars\nB) Jupiter\nC) Venus\nD) Earth",
        "completion": "B",
    }


def test_mcq_pattern_fails_fast_on_options_without_an_answer():
    import time

    text = "Q: x A) a B) b C) c D) d " * 400
    start = time.perf_counter()
    assert not matches_task_pattern(text, "mcq")
    # ~0.07 s here when linear; catastrophic backtracking over 400 options would take hours, so a
    # generous bound keeps the guard without failing on a busy machine.
    assert time.perf_counter() - start < 30.0
