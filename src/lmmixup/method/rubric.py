"""The judge rubric (SPEC stage 1): prompts, reply parsing and the compressed 0-5 score."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

RATING_MIN, RATING_MAX = 1, 10
HIGH_SCORE = 4
FIELDS = ("overall", "rarity", "complexity", "informativeness")
SCORE_TOKENS = tuple(str(value) for value in range(RATING_MIN, RATING_MAX + 1))

_CRITERIA = """\
You judge examples of instruction-tuning data. You get one instruction and the response \
written for it. Rate the pair on four criteria, each an integer from 1 to 10.

- rarity: how uncommon and valuable the task or topic is. 1 = trivial and seen everywhere; \
5 = ordinary but useful; 10 = rare expertise or an unusual, valuable task.
- complexity: how much knowledge and reasoning the pair needs. 1 = a one-step lookup; \
5 = a few steps or some domain knowledge; 10 = deep multi-step reasoning or expert knowledge.
- informativeness: how much correct, useful content the response gives. 1 = empty, wrong or \
off-topic; 5 = correct but thin; 10 = complete, accurate and detailed.
- overall: the pair's value as training data, correctness and helpfulness first. \
1 = useless or harmful; 5 = acceptable with clear flaws; 10 = excellent in every way.
"""

_REPLY = (
    '\nReply with one JSON object and nothing else, for example:\n{"rarity": 4, '
    '"complexity": 6, "informativeness": 7, "overall": 7}'
)
_LOGPROB_REPLY = (
    "\nReply with one JSON object and nothing else, giving only the overall score, "
    'written without spaces, for example:\n{"overall":7}'
)
RUBRIC_SYSTEM = _CRITERIA + _REPLY
RUBRIC_LOGPROB_SYSTEM = _CRITERIA + _LOGPROB_REPLY

# What "correct" and "informative" mean for each task type (records.TASK_TYPES), added to the
# rubric when the rate config asks for a rubric per task type (`rate.rubric_by_task`).
TASK_GUIDANCE = {
    "qa": "This pair is a question and its answer; word problems and calculations count here. "
    "Correct means the answer is right and, when the question asks for a quantity, ends with "
    "one final result a reader can check (for example '#### 42'); an arithmetic slip, a "
    "missing final result or a result the steps do not lead to makes it wrong. Informative "
    "means it shows the steps needed to follow the result.",
    "mcq": "This pair is a multiple-choice question. Correct means the response commits to "
    "exactly one of the options offered and that option is the right one; naming several "
    "options, none, or one that is not offered is wrong. Informative means it says briefly why "
    "that option is right.",
    "tfq": "This pair asks whether a statement is true or false. Correct means the response "
    "gives one clear verdict, true or false, and the verdict is right; hedging between the "
    "two is wrong. Informative means it states the fact or reasoning that decides it.",
    "cs": "This pair names a category and makes a statement about it. Correct means the "
    "statement is true of that category and really about it. Informative means the statement "
    "says something specific and useful rather than a vague or circular remark.",
    "paragraph": "This pair asks for free-form text. Correct means every claim in the "
    "response is true and it does what was asked, in the form asked for. Informative means it "
    "covers the points a knowledgeable writer would, without padding or repetition.",
}


def rubric_system(task_type: str | None = None, *, logprob: bool = False) -> str:
    """The rubric's system prompt; with a task type, its paragraph follows the criteria.

    ``None`` (no task type, or the rubric per task type is off) gives the one rubric for all,
    byte for byte. An unknown task type is a ValueError naming the known ones.
    """
    reply = _LOGPROB_REPLY if logprob else _REPLY
    if task_type is None:
        return _CRITERIA + reply
    if task_type not in TASK_GUIDANCE:
        known = ", ".join(TASK_GUIDANCE)
        raise ValueError(f"no rubric for task type {task_type!r}; known: {known}")
    return f"{_CRITERIA}\n{TASK_GUIDANCE[task_type]}\n{reply}"


LOGPROB_ASSISTANT_PREFIX = '{"overall":'


@dataclass(frozen=True)
class LogprobPrompt:
    """Chat messages plus the text that pre-fills the assistant turn."""

    messages: list[dict]
    assistant_prefix: str
    score_tokens: tuple[str, ...] = SCORE_TOKENS


def _pair_text(prompt: str, completion: str) -> str:
    return f"Instruction:\n{prompt}\n\nResponse:\n{completion}"


def build_rubric_messages(prompt: str, completion: str, task_type: str | None = None) -> list[dict]:
    """Chat messages asking a judge for the four ratings of one pair as a JSON object
    (``task_type``: see `rubric_system`)."""
    return [
        {"role": "system", "content": rubric_system(task_type)},
        {"role": "user", "content": _pair_text(prompt, completion)},
    ]


def build_rubric_logprob_prompt(
    prompt: str, completion: str, task_type: str | None = None
) -> LogprobPrompt:
    """The rubric set up so that the judge's very next token is its Overall score
    (``task_type``: see `rubric_system`).

    Convention for the caller (a backend that reads token probabilities):

    - Render ``messages`` with the chat template and the generation prompt, then append
      ``assistant_prefix`` (``{"overall":``, no trailing space) verbatim. The system prompt asks
      for compact JSON, so the next token is the bare digit in both GPT-2-style and
      digit-splitting (Llama-3, Qwen) tokenizers.
    - Read the next-token distribution for each of ``score_tokens`` ("1".."10"), also adding the
      probability of the same text with one leading space where the vocabulary has it.
    - "10": when the vocabulary has a single token "10", use it. Otherwise "10" is "1" then "0":
      with q = P("0" | prefix + "1"), take P(10) = P("1") * q and P(1) = P("1") * (1 - q).
    - Renormalise over 1..10; the expected Overall is sum(v * P(v)); ``compress_score``
      accepts that float.
    """
    messages = [
        {"role": "system", "content": rubric_system(task_type, logprob=True)},
        {"role": "user", "content": _pair_text(prompt, completion)},
    ]
    return LogprobPrompt(messages=messages, assistant_prefix=LOGPROB_ASSISTANT_PREFIX)


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def compress_score(overall: float) -> int:
    """The 0..5 score of a 1..10 Overall: ``min(9, max(4, overall)) - 4``.

    A float (an expected Overall from a probability-reading judge) is rounded half up first,
    so 7.5 gives 4 and 7.49 gives 3.
    """
    value = float(overall)
    if not math.isfinite(value):
        raise ValueError(f"overall must be finite, got {overall!r}")
    return min(9, max(4, _round_half_up(value))) - 4


def is_high(score: float, threshold: int = HIGH_SCORE) -> bool:
    """Whether a compressed score counts as high quality (default: score >= 4, Overall >= 8)."""
    return score >= threshold


def _check_rating(name: str, value: int | None, required: bool) -> None:
    if value is None and not required:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if not RATING_MIN <= value <= RATING_MAX:
        raise ValueError(f"{name} must be in {RATING_MIN}..{RATING_MAX}, got {value}")


@dataclass(frozen=True)
class Rating:
    """A judge's rubric rating: Overall (required) and the three other criteria, 1..10."""

    overall: int
    rarity: int | None = None
    complexity: int | None = None
    informativeness: int | None = None

    def __post_init__(self) -> None:
        for name in FIELDS:
            _check_rating(name, getattr(self, name), required=name == "overall")

    @property
    def score(self) -> int:
        """The compressed 0..5 score."""
        return compress_score(self.overall)

    def to_record(self, rater: str, method: str) -> dict:
        """The ``rating`` field of a rated record (DESIGN.md)."""
        return {
            "overall": self.overall,
            "score": self.score,
            "rarity": self.rarity,
            "complexity": self.complexity,
            "informativeness": self.informativeness,
            "rater": rater,
            "method": method,
        }


# --- parsing a judge's reply -------------------------------------------------------------

_MAX_CANDIDATES = 32
_INTEGER_TEXT = re.compile(r"\s*\d+\s*")
# key, then a value: quoted, or a bare token that a delimiter ends (a value at the very end
# of a cut-off reply may itself be cut: "1" of "10").
_LOOSE_PAIR = re.compile(
    r"""["']?([A-Za-z][A-Za-z _-]*?)["']?\s*[:=]\s*(?:"([^"]*)"|'([^']*)'|([^\s,;"'}]+)(?=\s*[,;\n}]))"""
)
_KEY_SUFFIXES = ("rating", "score")


def _field_of(key: str) -> str | None:
    """Map "Overall rating", "overall_rating", "OVERALL" ... to a field name (or None)."""
    name = re.sub(r"[^a-z]", "", key.lower())
    for suffix in _KEY_SUFFIXES:
        if name.endswith(suffix) and name != suffix:
            name = name.removesuffix(suffix)
    return name if name in FIELDS else None


def _as_integer(value: Any) -> int | None:
    """The integer a JSON value states: an int, an integral number (7.0) or a string of
    digits ("7"); None for anything else (7.5, "8/10", "95%", true, null, a list)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER_TEXT.fullmatch(value):
        return int(value)
    return None


def _rating_value(name: str, value: Any) -> int | str:
    """The 1..10 rating a value states, or why it states none (never clamped or rounded)."""
    number = _as_integer(value)
    if number is None or not RATING_MIN <= number <= RATING_MAX:
        return f"{name} is {json.dumps(value)}, not an integer from {RATING_MIN} to {RATING_MAX}"
    return number


def _rating_from_pairs(pairs: list[tuple[str, Any]]) -> Rating | str | None:
    """A Rating from an object's key/value pairs, the reason a value is unusable, or None
    when the object has no Overall. The first value of each field counts."""
    values: dict[str, Any] = {}
    for key, raw in pairs:
        name = _field_of(key) if isinstance(key, str) else None
        if name is not None and name not in values:
            values[name] = raw
    if "overall" not in values:
        return None
    ratings = {name: _rating_value(name, raw) for name, raw in values.items()}
    reasons = [value for value in ratings.values() if isinstance(value, str)]
    return "; ".join(reasons) if reasons else Rating(**ratings)


def _json_pairs(text: str, start: int) -> list[tuple[str, Any]] | None:
    """The top-level key/value pairs of a JSON object starting at ``start``, or None."""
    try:
        pairs, _ = json.JSONDecoder(object_pairs_hook=list).raw_decode(text, start)
    except (ValueError, RecursionError):
        return None
    return pairs if isinstance(pairs, list) else None


def _loose_value(double: str, single: str, bare: str) -> Any:
    """A loosely written value: a quoted string as is, a bare token as the JSON it spells."""
    if not bare:
        return double or single
    try:
        return json.loads(bare)
    except ValueError:
        return bare


def _loose_pairs(text: str, start: int) -> list[tuple[str, Any]]:
    """Key/value pairs up to the next "}": for single quotes, trailing commas, cut-off replies."""
    end = text.find("}", start + 1)
    segment = text[start + 1 : end + 1 if end >= 0 else len(text)]
    return [(key, _loose_value(*value)) for key, *value in _LOOSE_PAIR.findall(segment)]


def _object_starts(text: str) -> Iterator[int]:
    start = text.find("{")
    for _ in range(_MAX_CANDIDATES):
        if start < 0:
            return
        yield start
        start = text.find("{", start + 1)


def read_rating(text: str) -> Rating | str:
    """The rating in a judge's reply, or the reason there is none.

    The first object with an Overall is the judge's rating. Tolerated: code fences, prose
    around the object, single-quoted, trailing-comma or cut-off objects, key spellings like
    "Overall rating" / "overall_rating" / "OVERALL"; a missing criterion is None. Every value
    given must be what the rubric asks for, an integer from 1 to 10: an int, an integral
    number (7.0) or a string of digits ("7"). Anything else (42, 0, 7.5, "8/10", "95%", a
    value cut off at the end of the reply) makes the whole rating a failure, with the reason;
    nothing is clamped, rounded or rescaled.
    """
    if not isinstance(text, str):
        return "the judge's reply is not text"
    for start in _object_starts(text):
        pairs = _json_pairs(text, start)
        rating = _rating_from_pairs(pairs if pairs is not None else _loose_pairs(text, start))
        if rating is not None:
            return rating
    return 'no rating object with an "overall" in the judge\'s reply'


def parse_rating(text: str) -> Rating | None:
    """The rating in a judge's reply, or None when it has no usable one (see `read_rating`)."""
    rating = read_rating(text)
    return rating if isinstance(rating, Rating) else None
