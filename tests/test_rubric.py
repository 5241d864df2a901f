"""The judge rubric: prompts, parse_rating, compress_score and the Rating record."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmmixup.method.rubric import (
    Rating,
    build_rubric_logprob_prompt,
    build_rubric_messages,
    compress_score,
    is_high,
    parse_rating,
    read_rating,
)


def test_rubric_messages_carry_the_pair_and_the_json_keys():
    messages = build_rubric_messages("Name a prime.", "7 is prime.")
    assert [m["role"] for m in messages] == ["system", "user"]
    for key in ("rarity", "complexity", "informativeness", "overall"):
        assert f'"{key}"' in messages[0]["content"]
    assert "Name a prime." in messages[1]["content"]
    assert "7 is prime." in messages[1]["content"]


def test_logprob_prompt_prefills_up_to_the_overall_score():
    built = build_rubric_logprob_prompt("Q", "A")
    assert built.assistant_prefix == '{"overall":'
    assert built.score_tokens == tuple(str(v) for v in range(1, 11))
    assert built.messages[-1]["role"] == "user"
    assert '{"overall":7}' in built.messages[0]["content"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"rarity": 3, "complexity": 4, "informativeness": 5, "overall": 6}', (6, 3, 4, 5)),
        ('```json\n{"overall": 9, "rarity": 2}\n```', (9, 2, None, None)),
        ('Here is my rating.\n{"overall": 8}\nHope it helps!', (8, None, None, None)),
        ('{"Overall rating": 7, "Rarity": 2}', (7, 2, None, None)),
        ('{"OVERALL": 5, "COMPLEXITY": 6}', (5, None, 6, None)),
        ('{"overall_rating": 4, "informativeness_score": 9}', (4, None, None, 9)),
        ('{"overall": 7.0, "rarity": 1e1}', (7, 10, None, None)),
        ('{"overall": "8", "rarity": " 3 "}', (8, 3, None, None)),
        ('{"overall": 1, "rarity": 10, "complexity": 1, "informativeness": 10}', (1, 10, 1, 10)),
        (
            '{"overall": 6, "notes": {"overall": 2}, "tags": [1, 2], "x": "y"}',
            (6, None, None, None),
        ),
        ('{"overall": 3} and then {"overall": 9}', (3, None, None, None)),
        ('{"result": {"overall": 6, "rarity": 5}}', (6, 5, None, None)),
        ("{'overall': 7, 'rarity': 4}", (7, 4, None, None)),
        ("{'overall': '7', 'rarity': 4 }", (7, 4, None, None)),
        ('{"overall": 8, "rarity": 4,}', (8, 4, None, None)),
        ('{"overall": 8, "rarity": 4', (8, None, None, None)),  # the cut-off 4 may be 4x
        ('{"overall": 8\n', (8, None, None, None)),
        ('{"template": "{overall}"} {"overall": 5}', (5, None, None, None)),
    ],
)
def test_parse_rating_accepts(text, expected):
    rating = parse_rating(text)
    assert rating is not None
    assert (rating.overall, rating.rarity, rating.complexity, rating.informativeness) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "I cannot rate this.",
        "no json { here",
        '{"rarity": 5, "complexity": 6}',
        '{"overall": "excellent"}',
        '{"overall": NaN}',
        '{"overall": null}',
        '{"score": 8}',
        "{}",
        "[1, 2, 3]",
        '{"overall": true} {"overall": 4}',
        '{"rarity": 4, "overall": 1',  # cut off: 1 or 10
    ],
)
def test_parse_rating_rejects(text):
    assert parse_rating(text) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"overall": 42}', "overall is 42,"),
        ('{"overall": 1e3}', "overall is 1000.0,"),
        ('{"overall": "80/100"}', 'overall is "80/100",'),
        ('{"overall": "95%"}', 'overall is "95%",'),
        ('{"overall": 0}', "overall is 0,"),
        ('{"overall": -3}', "overall is -3,"),
        ('{"overall": "3/5"}', 'overall is "3/5",'),
        ('{"overall": "8/10"}', 'overall is "8/10",'),
        ('{"overall": 7.5}', "overall is 7.5,"),
        ('{"overall": 8, "rarity": 14}', "rarity is 14,"),
        ('{"overall": 8, "complexity": 0}', "complexity is 0,"),
        ('{"overall": 8, "informativeness": "95%"}', 'informativeness is "95%",'),
        ("{'overall': 80/100}", 'overall is "80/100",'),
        ("{'overall': 3/5, 'rarity': 2,}", 'overall is "3/5",'),
        ('{"rarity": 14, "complexity": -3, "informativeness": 0, "overall": 42}', "rarity is 14,"),
    ],
)
def test_out_of_range_or_rescaled_values_are_failures_never_clamped(text, reason):
    result = read_rating(text)
    assert isinstance(result, str) and reason in result and "integer from 1 to 10" in result
    assert parse_rating(text) is None


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_rating_never_raises(text):
    result = parse_rating(text)
    assert result is None or 1 <= result.overall <= 10


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="{}[]\":,'0123456789.-+ overalOVERAL_/\n", max_size=80))
def test_parse_rating_never_raises_on_json_like_text(text):
    result = parse_rating(text)
    assert result is None or 1 <= result.overall <= 10


@pytest.mark.parametrize(
    ("overall", "score"),
    [(1, 0), (2, 0), (3, 0), (4, 0), (5, 1), (6, 2), (7, 3), (8, 4), (9, 5), (10, 5)],
)
def test_compress_score_on_the_scale(overall, score):
    assert compress_score(overall) == score


@pytest.mark.parametrize(
    ("overall", "score"), [(7.49, 3), (7.5, 4), (8.4, 4), (4.5, 1), (3.2, 0), (9.7, 5)]
)
def test_compress_score_rounds_floats_half_up(overall, score):
    assert compress_score(overall) == score


def test_compress_score_rejects_nan():
    with pytest.raises(ValueError):
        compress_score(float("nan"))


def test_is_high_threshold():
    assert is_high(4) and is_high(5)
    assert not is_high(3)
    assert is_high(3, threshold=3)


def test_rating_record():
    record = Rating(overall=8, rarity=3).to_record(rater="judge-x", method="json")
    assert record == {
        "overall": 8,
        "score": 4,
        "rarity": 3,
        "complexity": None,
        "informativeness": None,
        "rater": "judge-x",
        "method": "json",
    }


@pytest.mark.parametrize("bad", [{"overall": 0}, {"overall": 11}, {"overall": 5, "rarity": 12}])
def test_rating_validates_its_range(bad):
    with pytest.raises(ValueError):
        Rating(**bad)


# ---------------------------------------------------------------------------------------
# rate.rubric_by_task: a paragraph per task type


def test_the_plain_rubric_is_byte_for_byte_the_one_cached_judge_calls_were_made_with():
    import hashlib

    from lmmixup.method.rubric import rubric_system

    def digest(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    assert digest(build_rubric_messages("Q", "A")[0]["content"]) == (
        "5b097d1f25c94e5e9e2bfaab8b99f61dbee9d8283eeeda5bf4aab41ca5ea53a5"
    )
    assert digest(build_rubric_logprob_prompt("Q", "A").messages[0]["content"]) == (
        "211dd4e58fa534cb8c3cfaf3646edadb5d8b4eb2cde5a5c5ea45151bbea791bd"
    )
    assert build_rubric_messages("Q", "A", None) == build_rubric_messages("Q", "A")
    assert rubric_system(None) == build_rubric_messages("Q", "A")[0]["content"]


@pytest.mark.parametrize(
    ("task_type", "phrase"),
    [
        ("qa", "final result"),
        ("mcq", "exactly one of the options"),
        ("tfq", "true or false"),
        ("cs", "category"),
        ("paragraph", "padding"),
    ],
)
def test_each_task_type_adds_its_own_paragraph_before_the_reply_format(task_type, phrase):
    from lmmixup.method.rubric import TASK_GUIDANCE

    plain = build_rubric_messages("Q", "A")[0]["content"]
    system = build_rubric_messages("Q", "A", task_type)[0]["content"]
    assert phrase in TASK_GUIDANCE[task_type] and TASK_GUIDANCE[task_type] in system
    assert system.endswith('"informativeness": 7, "overall": 7}') and system != plain
    others = [text for name, text in TASK_GUIDANCE.items() if name != task_type]
    assert not any(text in system for text in others)
    logprob = build_rubric_logprob_prompt("Q", "A", task_type)
    assert TASK_GUIDANCE[task_type] in logprob.messages[0]["content"]
    assert logprob.messages[0]["content"].endswith('{"overall":7}')
    assert logprob.assistant_prefix == '{"overall":'


def test_every_task_type_has_a_paragraph_and_an_unknown_one_is_refused():
    from lmmixup.method.rubric import TASK_GUIDANCE, rubric_system
    from lmmixup.records import TASK_TYPES

    assert set(TASK_GUIDANCE) == set(TASK_TYPES)
    with pytest.raises(ValueError, match="no rubric for task type 'poem'"):
        rubric_system("poem")


class _EchoJudge:
    """A generate-mode judge that keeps the system prompts it was sent and rates 7."""

    name = "echo-judge"

    def __init__(self):
        self.systems: list[str] = []

    def generate(self, prompts, params):
        from lmmixup.backends.base import Generation

        self.systems += [messages[0]["content"] for messages in prompts]
        return [Generation(text='{"overall": 7}', finish_reason="eos") for _ in prompts]


@pytest.mark.parametrize("by_task", [False, True])
def test_the_judge_picks_the_rubric_by_the_record_s_task_type_only_when_asked(by_task):
    from lmmixup.config import RateConfig
    from lmmixup.method.rubric import TASK_GUIDANCE
    from lmmixup.stages.judge import BudgetStop, make_generate_judge

    generator = _EchoJudge()
    cfg = RateConfig(mode="generate", rubric_by_task=by_task)
    judge = make_generate_judge(generator, cfg, BudgetStop())
    batch = [
        {"id": "a", "prompt": "2+2?", "completion": "4", "task_type": "mcq"},
        {"id": "b", "prompt": "Is ice cold?", "completion": "True", "task_type": "tfq"},
        {"id": "c", "prompt": "Say hi.", "completion": "Hi."},
    ]
    rated = judge(batch)
    assert [r["rating"]["overall"] for r in rated] == [7, 7, 7]
    plain = build_rubric_messages("x", "y")[0]["content"]
    if by_task:
        assert TASK_GUIDANCE["mcq"] in generator.systems[0]
        assert TASK_GUIDANCE["tfq"] in generator.systems[1]
        assert generator.systems[2] == plain
    else:
        assert generator.systems == [plain] * 3
