"""Cheap, model-free verifiers of a distilled pair against the members it merges.

Each verifier gives a score recorded on the pair and, when it fails, a reject reason:

- answer_mismatch / no_final_answer: when members state final answers (`lmmixup.method.answers`),
  the pair's must equal one of theirs (of the same kind: number, verdict, text);
  a pair that states none when a member does is `no_final_answer`;
- wrong_arithmetic: a plain equation the pair writes out whose left side does not give its
  right side (`2 * 7 / 2 = 16`), within `ARITHMETIC_TOLERANCE` for rounded results; one a
  member wrote too is quoted, not invented;
- unsupported_number: a number in the pair that no member has, is not small (at most
  `free_number_max`: step numbers, counts) and is not the correct result of arithmetic the
  pair writes out (`20 + 15 = 35`). The pair's final answer must be supported; of its other
  numbers, more than `max_unsupported_numbers` unsupported ones fail;
- placeholder: a bracketed placeholder (`[your_spot_limit]`, `[...]`, `{name}`,
  `<insert link>`) that no member has;
- unsupported_entity: more than `max_unsupported_entities` capitalised words written
  mid-sentence (`by Chime that`) that no member has;
- near_copy: the pair repeats one member in long runs for at least `near_copy_share` of its
  words, and what follows the last run holds a content word no member has: a copy whose
  ending was changed (the exact copy is the `copy` check of `lmmixup.method.faithfulness`);
- low_coverage: the mean over members of the share of each member's key terms (content
  words of 4+ letters and numbers, from the text the distiller was shown) that the pair
  keeps is below `min_coverage`.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any

from lmmixup.config import DistillConfig
from lmmixup.method.answers import FinalAnswer, answers_agree, final_answer, numbers_in
from lmmixup.method.faithfulness import word_tokens
from lmmixup.method.prompt import linearise

VERIFY_REASONS = (
    "near_copy",
    "answer_mismatch",
    "no_final_answer",
    "wrong_arithmetic",
    "unsupported_number",
    "placeholder",
    "unsupported_entity",
    "low_coverage",
)
"""The verifiers' reject reasons, in the order a pair is checked (the first one found is its reason)."""

_STOPWORDS_TEXT = (
    "a an the and or but if then than so of to in on at by for with from into onto over under "
    "about after before between through during without within is are was were be been being am "
    "do does did have has had having it its this that these those there here what which who whom "
    "whose when where why how all any both each few more most other some such no nor not only own "
    "same too very can will just should would could may might must shall also as out up down off "
    "again further once you your yours he him his she her hers we our ours they them their theirs "
    "i me my one two three answer final therefore total thus hence"
)
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())
_PLACEHOLDER = re.compile(
    r"(?<![\w\]\\])\[(?:[^\[\]\n]*[A-Za-z][^\[\]\n]*|\s*\.\.\.\s*|\s*…\s*)\](?!\()"
    r"|(?<![\w\\}^_$])\{[A-Za-z_][\w ]{0,40}\}"
    r"|<\s*(?:insert|your|name|add|enter|placeholder|link|url|todo)\b[^<>\n]{0,60}>",
    re.IGNORECASE,
)
_CHECKBOX = re.compile(r"\[\s*[xX ]?\s*\]")
_ENTITY = re.compile(r"(?<=[a-z0-9,;] )[A-Z][A-Za-z]*[A-Za-z]")
_KEY_WORD = re.compile(r"[a-z]{4,}")
_EQUATION = re.compile(r"([^=\n<>.;:!?]*?)=\s*\$?(\d[\d,]*(?:\.\d+)?)")
# Plain arithmetic only (numbers, + - * / x, no words, units, variables or brackets), so an
# equation read as wrong really is: `$30*7 = $210`, `<<6*2=12>>`; not `.20*50`, `2x + 10`.
_PLAIN_EQUATION = re.compile(
    r"(?<![\w.,/()%$])\$?(\d+(?:\.\d+)?(?:\s*[-+*/×]\s*\$?\d+(?:\.\d+)?)+)"
    r"\s*=\s*\$?(\d+(?:\.\d+)?)(?![\w(]|\.\d|\s*[-+*/×]\s*\d)"
)
_ARITH_TOKEN = re.compile(r"\d[\d,]*(?:\.\d+)?|[-+*/×÷–−]|(?<=\s)x(?=\s)")
_OPS = {"×": "*", "x": "*", "÷": "/", "–": "-", "−": "-"}
_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_MIN_RUN = 4  # words: a shorter match with a member is not a copied run
# Relative error allowed between an equation's sides: written results are often rounded
# (`10 / 3 = 3.33`), so a result within 1% of the exact value counts as correct.
ARITHMETIC_TOLERANCE = 0.01


@dataclass(frozen=True)
class Verification:
    """What the verifiers found: reasons to reject (empty when none) and the scores."""

    flags: tuple[str, ...]
    answer: str | None
    member_answers: tuple[str, ...]
    answer_agrees: bool | None
    wrong_arithmetic: tuple[str, ...]
    unsupported_numbers: tuple[str, ...]
    placeholders: tuple[str, ...]
    unsupported_entities: tuple[str, ...]
    near_copy: float
    coverage: float

    def as_dict(self) -> dict[str, Any]:
        """The JSON form stored on records (`checks`)."""
        return {
            "answer": self.answer,
            "member_answers": list(self.member_answers),
            "answer_agrees": self.answer_agrees,
            "wrong_arithmetic": list(self.wrong_arithmetic),
            "unsupported_numbers": list(self.unsupported_numbers),
            "placeholders": list(self.placeholders),
            "unsupported_entities": list(self.unsupported_entities),
            "near_copy": round(self.near_copy, 4),
            "coverage": round(self.coverage, 4),
        }


def _evaluate(expression: str) -> float | None:
    """The value of digits joined by + - * / (Python's precedence), None if it is not one."""
    try:
        tree = ast.parse(expression, mode="eval").body
    except SyntaxError:
        return None

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](value(node.left), value(node.right))
        raise ValueError(expression)

    try:
        return value(tree)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def _lhs_expression(segment: str) -> str:
    """The numbers and operators of an equation's left side, words dropped: `10 socks * 2 /pair` -> `10*2`."""
    parts: list[str] = []
    for token in _ARITH_TOKEN.findall(segment):
        if token[0].isdigit():
            if parts and parts[-1][0].isdigit():
                parts = []  # two numbers with no operator between: start again from this one
            parts.append(token.replace(",", ""))
        elif parts and parts[-1][0].isdigit():
            parts.append(_OPS.get(token, token))
    while parts and not parts[-1][0].isdigit():
        parts.pop()
    return "".join(parts)


def checked_equations(text: str) -> tuple[set[str], list[str]]:
    """The arithmetic a text writes out, checked: the results it computes correctly
    (`a + b = c`, words between the numbers allowed, GSM8K's `<<a*b=c>>` too), and the plain
    equations whose left side does not give their right side (`2 * 7 / 2 = 16`)."""
    derived: set[str] = set()
    for segment, result in _EQUATION.findall(text):
        expression = _lhs_expression(segment)
        normalised = numbers_in(result)
        if not normalised or not any(op in expression for op in "+-*/"):
            continue
        value = _evaluate(expression)
        if value is not None and _same(value, float(normalised[0])):
            derived.add(normalised[0])
    wrong = []
    for match in _PLAIN_EQUATION.finditer(text):
        if _continues_arithmetic(text[: match.start()]):
            continue  # `100 x 1/4 = 25`: only the tail of the written sum was matched
        left, right = match.groups()
        expression = re.sub(r"[\s$]", "", left).replace("×", "*")
        value = _evaluate(expression)
        if value is not None and not _same(value, float(right)):
            wrong.append(f"{expression}={right}")
    return derived, wrong


def _continues_arithmetic(before: str) -> bool:
    """Whether the text before a match ends inside a longer expression (an operator, a
    number, or `x` as a times sign)."""
    token = before.rstrip().rsplit(maxsplit=1)[-1] if before.strip() else ""
    return bool(token) and (token in {"x", "X"} or token[-1] in "0123456789*×/+-=(.,%$")


def _same(value: float, written: float) -> bool:
    """Whether a written result is the computed value, allowing for rounding."""
    return abs(value - written) <= ARITHMETIC_TOLERANCE * max(1, abs(value))


def placeholders_in(text: str) -> list[str]:
    """Bracketed placeholders in a text (`[your name]`, `[...]`, `{name}`, `<insert link>`);
    not markdown links, checkboxes or indexing (`x[i]`)."""
    return [
        match.group()
        for match in _PLACEHOLDER.finditer(text)
        if not _CHECKBOX.fullmatch(match.group())
    ]


def entities_in(text: str) -> list[str]:
    """Capitalised words of 2+ letters written mid-sentence (after a lower-case word, digit or comma)."""
    return _ENTITY.findall(text)


def key_terms(text: str) -> set[str]:
    """A text's key content: its content words of 4+ letters (lower-cased) and its numbers."""
    words = {word for word in _KEY_WORD.findall(text.lower()) if word not in STOPWORDS}
    return words | set(numbers_in(text))


def _content(token: str) -> bool:
    return (len(token) >= 3 or any(ch.isdigit() for ch in token)) and token not in STOPWORDS


def near_copy_score(text: str, member_texts: Sequence[str]) -> tuple[float, list[str]]:
    """The share of a text's words inside runs (4+ words) copied from its closest member, and
    the text's words after the last such run (its tail)."""
    tokens = word_tokens(text)
    if not tokens:
        return 0.0, []
    matcher = SequenceMatcher(None, autojunk=False)
    matcher.set_seq2(tokens)
    best, tail = 0.0, tokens
    for member in member_texts:
        matcher.set_seq1(word_tokens(member))
        runs = [block for block in matcher.get_matching_blocks() if block.size >= _MIN_RUN]
        share = sum(block.size for block in runs) / len(tokens)
        if runs and share > best:
            best, tail = share, tokens[runs[-1].b + runs[-1].size :]
    return best, tail


def _member_answers(members: Sequence[Mapping[str, Any]]) -> list[FinalAnswer]:
    found = (final_answer(member["prompt"], member["completion"]) for member in members)
    return [answer for answer in found if answer is not None]


def verify_pair(
    prompt: str,
    completion: str,
    members: Sequence[Mapping[str, Any]],
    cfg: DistillConfig,
) -> Verification:
    """Run every verifier on a distilled (prompt, completion) against its member records
    (`prompt`/`completion` each); flags in `VERIFY_REASONS` order (module doc)."""
    text = f"{prompt}\n{completion}"
    full_members = [f"{member['prompt']}\n{member['completion']}" for member in members]
    member_lower = "\n".join(full_members).lower()
    member_words = set(word_tokens(member_lower))
    flags: list[str] = []

    near_copy, tail = near_copy_score(text, full_members)
    if near_copy >= cfg.near_copy_share and any(
        _content(token) and token not in member_words for token in tail
    ):
        flags.append("near_copy")

    answer = final_answer(prompt, completion)
    member_answers = _member_answers(members)
    agrees = None if answer is None else answers_agree(answer, member_answers)
    if agrees is False:
        flags.append("answer_mismatch")
    elif answer is None and member_answers:
        flags.append("no_final_answer")

    derived, wrong = checked_equations(text)
    quoted = {w for member in full_members for w in checked_equations(member)[1]}
    wrong = [equation for equation in wrong if equation not in quoted]
    if wrong:
        flags.append("wrong_arithmetic")
    supported = {n for member in full_members for n in numbers_in(member)} | derived
    unsupported = [
        number
        for number in dict.fromkeys(numbers_in(text))
        if number not in supported and float(number) > cfg.free_number_max
    ]
    answer_unsupported = (
        answer is not None and answer.kind == "number" and answer.value in unsupported
    )
    if answer_unsupported or len(unsupported) > cfg.max_unsupported_numbers:
        flags.append("unsupported_number")

    placeholders = [
        p for p in dict.fromkeys(placeholders_in(text)) if p.lower() not in member_lower
    ]
    if placeholders:
        flags.append("placeholder")

    entities = [
        entity
        for entity in dict.fromkeys(entities_in(text))
        if not re.search(rf"\b{re.escape(entity.lower())}\b", member_lower)
    ]
    if len(entities) > cfg.max_unsupported_entities:
        flags.append("unsupported_entity")

    pair_terms = key_terms(text)
    shown = [linearise([member], cfg.max_member_chars) for member in members]
    coverages = [_coverage(key_terms(member), pair_terms) for member in shown]
    coverage = sum(coverages) / len(coverages) if coverages else 1.0
    if coverage < cfg.min_coverage:
        flags.append("low_coverage")

    return Verification(
        flags=tuple(flags),
        answer=None if answer is None else answer.value,
        member_answers=tuple(dict.fromkeys(a.value for a in member_answers)),
        answer_agrees=agrees,
        wrong_arithmetic=tuple(wrong),
        unsupported_numbers=tuple(unsupported),
        placeholders=tuple(placeholders),
        unsupported_entities=tuple(entities),
        near_copy=near_copy,
        coverage=coverage,
    )


def _coverage(member_terms: set[str], pair_terms: set[str]) -> float:
    """The share of a member's key terms the pair keeps (1 for a member without any)."""
    return len(member_terms & pair_terms) / len(member_terms) if member_terms else 1.0
