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
- leaked_instruction: the pair repeats a run of `leak_min_words` or more words of the
  distiller's own instructions (the merge prompt, or the think sentence its training targets
  use), which no member has;
- unsupported_entity: more than `max_unsupported_entities` capitalised words written
  mid-sentence (`by Chime that`) that no member has;
- near_copy: the pair's completion repeats one member's completion in long runs for at least
  `near_copy_share` of its words, and what follows the last run holds a content word no
  member has: a copy whose ending was changed, whatever the pair did to the question (the
  exact copy is the `copy` check of `lmmixup.method.faithfulness`);
- spliced: the pair's prompt is taken from one member's prompt and its completion from
  another member's completion (at least `splice_similarity` of the words of each, in order,
  members as the distiller was shown them), and those two members ask different things: a
  question paired with an answer to another question;
- unfinished: the completion ends on a colon, announcing content it never gives
  ("Here is the list:"), which is what a reply cut at a stop string looks like;
- low_coverage: the mean over members of the share of each member's key terms (content
  words of 4+ letters and numbers, from the text the distiller was shown) that the pair
  keeps is below `min_coverage`;
- dropped_member: the pair keeps less than `min_member_coverage` of one member's key terms:
  the merge left that member out.

`min_member_coverage` (the least-kept member's share) tells a cluster of redundant samples:
when even that member is mostly kept, one member's text already says what the others say.
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
from lmmixup.method.prompt import (
    SYSTEM_PROMPT,
    USER_PROMPT,
    default_think,
    linearise,
    shown_member,
)
from lmmixup.method.tasks import TASK_FORMATS

VERIFY_REASONS = (
    "echo",
    "near_copy",
    "spliced",
    "answer_mismatch",
    "no_final_answer",
    "wrong_arithmetic",
    "unsupported_number",
    "placeholder",
    "leaked_instruction",
    "unsupported_entity",
    "unsupported_terms",
    "unfinished",
    "low_coverage",
    "dropped_member",
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
LAYOUT_SLOTS = frozenset(
    slot for task in TASK_FORMATS.values() for slot in re.findall(r"<[^<>\n]+>", task.layout)
)
"""The slots of the answer layouts the distiller is shown (`<the question>`, `<option>`):
a pair that writes one out filled nothing in."""
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
UNFINISHED_ENDINGS = (":", "...", "\u2026")
"""A completion ending so announces content it never gives, or breaks off (a member cut off
in the source data ends "...", and a distiller copying it does too)."""
DIFFERENT_QUESTION_BELOW = 0.5
"""Share of the shorter prompt's words in the other under which two prompts ask different
things (the spliced check)."""
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
    min_member_coverage: float = 1.0
    term_support: float = 1.0
    spliced: tuple[int, int] | None = None
    leaked: str | None = None

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
            "min_member_coverage": round(self.min_member_coverage, 4),
            "term_support": round(self.term_support, 4),
            "spliced": None if self.spliced is None else list(self.spliced),
            "leaked": self.leaked,
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
    """Bracketed placeholders in a text (`[your name]`, `[...]`, `{name}`, `<insert link>`,
    a layout slot such as `<the question>`); not markdown links, checkboxes or indexing
    (`x[i]`)."""
    found = [
        match.group()
        for match in _PLACEHOLDER.finditer(text)
        if not _CHECKBOX.fullmatch(match.group())
    ]
    return found + [slot for slot in LAYOUT_SLOTS if slot in text]


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


def _matched_words(matcher: SequenceMatcher, text: str) -> tuple[int, int]:
    """How many words of the matcher's text (its second sequence) are found, in order, in
    `text`, and how many words `text` has."""
    words = word_tokens(text)
    matcher.set_seq1(words)
    return sum(block.size for block in matcher.get_matching_blocks()), len(words)


def _taken_from(matcher: SequenceMatcher, text: str) -> float:
    """The share of the matcher's text found, in order, in `text`."""
    matched, _ = _matched_words(matcher, text)
    return matched / len(matcher.b) if matcher.b else 0.0


def _same_question(matcher: SequenceMatcher, text: str) -> bool:
    """Whether the matcher's prompt and `text` ask the same thing: at least
    `DIFFERENT_QUESTION_BELOW` of the shorter one's words are in the other, in order (a
    prompt cut short, or one with words added, still asks what the whole one asks)."""
    matched, length = _matched_words(matcher, text)
    shorter = min(length, len(matcher.b))
    return shorter > 0 and matched / shorter >= DIFFERENT_QUESTION_BELOW


def spliced_members(
    prompt: str, completion: str, shown: Sequence[tuple[str, str]], threshold: float
) -> tuple[int, int] | None:
    """(i, j) when the pair's prompt is taken from member i's and its completion from member
    j's (at least `threshold` of the words of each, in order), member i's own completion
    fits the pair's less well, and member j's prompt asks something else (`_same_question`
    is false, so a damaged copy of the same question is not): a question joined to another
    question's answer. None otherwise (members asking the same thing, as in a cluster of
    redundant samples, are never spliced).

    `shown` holds each member's (prompt, completion) as the distiller was shown them
    (`shown_member`): a pair copied from a member cut to `max_member_chars` is compared with
    what the distiller could copy, and a pair taking only the start of a long member is
    still taken from it.
    """
    if len(shown) < 2:
        return None
    by_prompt, by_completion = SequenceMatcher(autojunk=False), SequenceMatcher(autojunk=False)
    by_prompt.set_seq2(word_tokens(prompt))
    by_completion.set_seq2(word_tokens(completion))
    prompt_shares = [_taken_from(by_prompt, member_prompt) for member_prompt, _ in shown]
    completion_shares = [_taken_from(by_completion, answer) for _, answer in shown]
    i = max(range(len(shown)), key=prompt_shares.__getitem__)
    j = max(range(len(shown)), key=completion_shares.__getitem__)
    if completion_shares[i] >= completion_shares[j]:
        return None  # the pair's question comes with its own answer, or one as close
    if prompt_shares[i] < threshold or completion_shares[j] < threshold:
        return None
    return None if _same_question(by_prompt, shown[j][0]) else (i, j)


_INSTRUCTION_TEXTS = (
    SYSTEM_PROMPT,
    *USER_PROMPT.split("{"),
    default_think({"members": [], "task_type": "qa"}),
)


def leaked_instruction(text: str, member_text: str, min_words: int) -> str | None:
    """The first run of `min_words`+ words the text shares with the distiller's instructions
    (`lmmixup.method.prompt`) that the members do not have, None when there is none."""
    tokens = word_tokens(text)
    matcher = SequenceMatcher(None, autojunk=False)
    matcher.set_seq2(tokens)
    member_words = " ".join(word_tokens(member_text))
    for instruction in _INSTRUCTION_TEXTS:
        matcher.set_seq1(word_tokens(instruction))
        for block in matcher.get_matching_blocks():
            run = " ".join(tokens[block.b : block.b + block.size])
            if block.size >= min_words and run not in member_words:
                return run
    return None


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

    if word_tokens(prompt.lower()) == word_tokens(completion.lower()):
        flags.append("echo")

    near_copy, tail = near_copy_score(completion, [member["completion"] for member in members])
    if near_copy >= cfg.near_copy_share and any(
        _content(token) and token not in member_words for token in tail
    ):
        flags.append("near_copy")

    shown = [shown_member(member, cfg.max_member_chars) for member in members]
    spliced = spliced_members(prompt, completion, shown, cfg.splice_similarity)
    if spliced is not None:
        flags.append("spliced")

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

    leaked = leaked_instruction(text, member_lower, cfg.leak_min_words)
    if leaked is not None:
        flags.append("leaked_instruction")

    entities = [
        entity
        for entity in dict.fromkeys(entities_in(text))
        if not re.search(rf"\b{re.escape(entity.lower())}\b", member_lower)
    ]
    if len(entities) > cfg.max_unsupported_entities:
        flags.append("unsupported_entity")

    pair_terms = key_terms(text)
    support = _coverage(pair_terms, key_terms(member_lower))
    if support < cfg.min_term_support:
        flags.append("unsupported_terms")
    blocks = [linearise([member], cfg.max_member_chars) for member in members]
    coverages = [_coverage(key_terms(block), pair_terms) for block in blocks]
    if completion.rstrip().endswith(UNFINISHED_ENDINGS):
        flags.append("unfinished")
    coverage = sum(coverages) / len(coverages) if coverages else 1.0
    if coverage < cfg.min_coverage:
        flags.append("low_coverage")
    if min(coverages, default=1.0) < cfg.min_member_coverage:
        flags.append("dropped_member")

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
        min_member_coverage=min(coverages, default=1.0),
        term_support=support,
        spliced=spliced,
        leaked=leaked,
    )


def _coverage(member_terms: set[str], pair_terms: set[str]) -> float:
    """The share of a member's key terms the pair keeps (1 for a member without any)."""
    return len(member_terms & pair_terms) / len(member_terms) if member_terms else 1.0
