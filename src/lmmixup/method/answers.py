"""Final answers and numbers in a text: one reading for the pair and for its members.

A final answer is what a (prompt, completion) pair commits to, read from the completion:

1. `#### X` (the last one), as GSM8K writes it;
2. `\\boxed{X}` (the last one);
3. "The (final) answer is X" (the last one), X a number, an option letter or True/False;
4. a completion that opens with an option letter (`B`, `(B)`, `Answer: B`), when the prompt
   lists options `A) .. D)`;
5. a true/false verdict: a completion that opens with `True`/`False` (`Answer: True` too),
   or "the statement is true/false".

An option letter is read as its option's text (so two pairs that list the options in another
order still agree), and any answer that is a number is compared as a number: commas, `$`,
`%`, a leading `+` and trailing zeros after the point do not count (`$1,200.00` is `1200`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

_NUMBER = re.compile(r"(?<![\w.])\$?\d[\d,]*(?:\.\d+)?")
_HASHES = re.compile(r"####\s*([^\n]+)")
_BOXED = re.compile(r"\\boxed\{([^{}]+)\}")
_ANSWER_IS = re.compile(
    r"(?i:\b(?:the\s+)?(?:final\s+)?answer\s+is\s*:?\s*)"
    r"\(?(\$?-?\d[\d,]*(?:\.\d+)?|[A-D]\b|(?i:true|false)\b)"
)
_LEADING_LETTER = re.compile(r"^\s*(?:(?i:answer)\s*:\s*)?\(?([A-D])\)?(?=[.):\s]|$)")
_LEADING_VERDICT = re.compile(r"^\s*(?:answer\s*:\s*)?(true|false)\b", re.IGNORECASE)
_STATEMENT_IS = re.compile(r"\bstatement\s+is\s+(true|false)\b", re.IGNORECASE)
_OPTION = re.compile(r"(?:^|\s)([A-D])\s*\)\s*(.+?)(?=\s+[A-D]\s*\)|\n|$)")


@dataclass(frozen=True)
class FinalAnswer:
    """A final answer: its kind (`number`, `verdict` or `text`, an option's text included) and
    normalised value (lower-cased text)."""

    kind: str
    value: str

    def __str__(self) -> str:
        return self.value


def normalise_number(text: str) -> str | None:
    """A number as compared: `$1,200.50` -> `1200.5`, `3.0` -> `3`; None if the text is not one."""
    cleaned = text.strip().rstrip(".").replace(",", "").replace("$", "").rstrip("%").lstrip("+")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(value.quantize(Decimal(1)))
    return format(value.normalize(), "f")


def numbers_in(text: str) -> list[str]:
    """Every number written in digits in a text, normalised (signs ignored), in order."""
    found = (normalise_number(match.group()) for match in _NUMBER.finditer(text))
    return [number for number in found if number is not None]


def _options(prompt: str) -> dict[str, str]:
    """The options `A) ..` to `D) ..` a prompt lists, by upper-case letter (first of each)."""
    options: dict[str, str] = {}
    for letter, text in _OPTION.findall(prompt):
        options.setdefault(letter.upper(), text.strip())
    return options


def _value(raw: str, prompt: str) -> FinalAnswer | None:
    """The final answer a marker's text states: a number, an option, a verdict or short text."""
    raw = raw.strip().strip("*").strip()
    lowered = raw.lower().rstrip(".")
    if lowered in ("true", "false"):
        return FinalAnswer("verdict", lowered)
    options = _options(prompt)
    if len(raw.rstrip(".)")) == 1 and raw[:1].upper() in options:
        return _value(options[raw[:1].upper()], "")
    numbers = numbers_in(raw)
    number = normalise_number(raw)
    if number is not None:
        return FinalAnswer("number", number)
    if len(numbers) == 1 and len(raw) <= 24:
        return FinalAnswer("number", numbers[0])  # "16 feet", "$30."
    return FinalAnswer("text", " ".join(lowered.split())) if lowered else None


def final_answer(prompt: str, completion: str) -> FinalAnswer | None:
    """The final answer a pair states (module doc), None when it states none."""
    for pattern in (_HASHES, _BOXED, _ANSWER_IS):
        matches = pattern.findall(completion)
        if matches:
            return _value(matches[-1], prompt)
    letter = _LEADING_LETTER.match(completion)
    if letter and letter.group(1).upper() in _options(prompt):
        return _value(letter.group(1), prompt)
    verdict = _LEADING_VERDICT.match(completion) or _STATEMENT_IS.search(completion)
    if verdict:
        return FinalAnswer("verdict", verdict.group(1).lower())
    return None


def answers_agree(answer: FinalAnswer, others: list[FinalAnswer]) -> bool | None:
    """Whether an answer equals one of the others of its kind; None when none is of its kind."""
    same_kind = [other.value for other in others if other.kind == answer.kind]
    if not same_kind:
        return None
    return answer.value in same_kind
