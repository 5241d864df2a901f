"""Degradation operators: make low-quality variants of a high-quality text (SPEC stage 6).

Two kinds of operator, each a pure function `(text, rng) -> str | None`:

- removal: takes information out (drop sentences or reasoning steps, truncate, keep only the
  bare final answer, replace numbers and names with vague words);
- noise: damages the surface only (typos, casing, whitespace, duplicated fragments).

An operator returns None when it cannot apply to the text (too short, nothing to replace) and
never returns its input unchanged. All randomness comes from the `random.Random` passed in,
so the same seed gives the same output.

`degrade_pair` applies 1 to 3 operators to a (prompt, completion) pair and names the ones
used. `llm_degrade_messages` and `parse_llm_degradation` are the prompt and the reply parser
for degradations written by a language model instead.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from lmmixup.method.tasks import task_parts

OperatorFn = Callable[[str, random.Random], str | None]
PairField = Literal["prompt", "completion"]
BOTH: tuple[PairField, ...] = ("completion", "prompt")

_SENTENCE_END = re.compile(r"(?<=[.!?])(\s+)")
_WORD = re.compile(r"\S+")
_LETTERS = re.compile(r"[A-Za-z]{3,}")
_NUMBER = re.compile(
    r"(?<![\w.])\$?\d+(?:,\d{3})*(?:\.\d+)?"
    r"|\b(?:two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|fifty"
    r"|hundred|thousand|million|dozen|half|twice)\b",
    re.IGNORECASE,
)
# A capitalised word after a lower-case word: most likely a name, not a sentence start.
_PROPER_NOUN = re.compile(r"(?<=[a-z,;] )[A-Z][a-z]+(?:['’]s)?")
_FINAL_ANSWER = re.compile(r"####\s*(\S+)\s*$")
_VAGUE_AMOUNTS = ("some", "a few", "several", "many", "a number of")
_VAGUE_NAMES = ("someone", "something", "somewhere", "a certain one")


# ---------------------------------------------------------------------------- text units


def sentences(text: str) -> list[str]:
    """The text cut after `.`, `!` or `?`; each piece keeps the whitespace that followed it."""
    pieces = _SENTENCE_END.split(text.strip())
    return [
        pieces[i] + (pieces[i + 1] if i + 1 < len(pieces) else "") for i in range(0, len(pieces), 2)
    ]


def _drop_some(units: list[str], rng: random.Random, keep_last: bool = False) -> list[str]:
    """The units without 1 to a third of them (never all, never the last when `keep_last`)."""
    candidates = list(range(len(units) - 1 if keep_last else len(units)))
    count = rng.randint(1, max(1, len(units) // 3))
    dropped = set(rng.sample(candidates, min(count, len(units) - 1)))
    return [unit for i, unit in enumerate(units) if i not in dropped]


def _changed(original: str, result: str) -> str | None:
    """The result, or None when it is blank or equal to the original."""
    return result if result.strip() and result != original else None


# ---------------------------------------------------------------------------- removal


def drop_sentences(text: str, rng: random.Random) -> str | None:
    """Remove one to a third of the sentences (needs two or more)."""
    units = sentences(text)
    if len(units) < 2:
        return None
    return _changed(text, "".join(_drop_some(units, rng)).strip())


def drop_steps(text: str, rng: random.Random) -> str | None:
    """Remove one to a third of the non-blank lines, never the last (the conclusion)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) < 2:
        return None
    return _changed(text, "\n".join(_drop_some(lines, rng, keep_last=True)))


def truncate(text: str, rng: random.Random) -> str | None:
    """Cut the text at a word boundary between 30% and 80% of its words (needs four words)."""
    words = list(_WORD.finditer(text))
    if len(words) < 4:
        return None
    keep = rng.randint(max(1, int(len(words) * 0.3)), max(1, int(len(words) * 0.8)))
    return _changed(text, text[: words[keep - 1].end()])


def bare_answer(text: str, rng: random.Random) -> str | None:
    """Keep only the final answer: N of a `#### N` line, else the first sentence."""
    final = _FINAL_ANSWER.search(text)
    if final is not None:
        return _changed(text, final.group(1))
    units = sentences(text)
    return _changed(text, units[0].strip()) if len(units) >= 2 else None


def vague(text: str, rng: random.Random) -> str | None:
    """Replace numbers and names with vague words (each with probability 0.6, at least one)."""
    spans = [(m, _VAGUE_AMOUNTS) for m in _NUMBER.finditer(text)]
    spans += [(m, _VAGUE_NAMES) for m in _PROPER_NOUN.finditer(text)]
    if not spans:
        return None
    spans.sort(key=lambda span: span[0].start())
    chosen = [span for span in spans if rng.random() < 0.6] or [rng.choice(spans)]
    parts, position = [], 0
    for match, words in chosen:
        if match.start() < position:
            continue
        parts += [text[position : match.start()], rng.choice(words)]
        position = match.end()
    return _changed(text, "".join(parts) + text[position:])


# ---------------------------------------------------------------------------- noise


def _typo(word: str, rng: random.Random) -> str:
    """The word with one letter swapped, dropped, doubled or replaced; always different."""
    i = rng.randrange(len(word) - 1)
    kind = rng.choice(("swap", "drop", "double", "replace"))
    if kind == "swap":
        result = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    elif kind == "drop":
        result = word[:i] + word[i + 1 :]
    elif kind == "replace":
        letter = rng.choice([c for c in "abcdefghijklmnopqrstuvwxyz" if c != word[i].lower()])
        result = word[:i] + letter + word[i + 1 :]
    else:
        result = word[: i + 1] + word[i:]
    return result if result != word else word[: i + 1] + word[i:]


def typos(text: str, rng: random.Random) -> str | None:
    """Misspell 3-10% of the words of three or more letters (at least one)."""
    words = list(_LETTERS.finditer(text))
    if not words:
        return None
    count = max(1, round(len(words) * rng.uniform(0.03, 0.1)))
    chosen = sorted(rng.sample(words, min(count, len(words))), key=lambda m: m.start())
    parts, position = [], 0
    for match in chosen:
        parts += [text[position : match.start()], _typo(match.group(), rng)]
        position = match.end()
    return _changed(text, "".join(parts) + text[position:])


def casing(text: str, rng: random.Random) -> str | None:
    """Lower-case everything, upper-case one sentence, or lower-case sentence starts."""
    units = sentences(text)
    modes = {
        "lower": lambda: text.lower(),
        "shout": lambda: _shout_one(units, rng),
        "starts": lambda: "".join(unit[:1].lower() + unit[1:] for unit in units),
    }
    for mode in rng.sample(list(modes), len(modes)):
        result = _changed(text, modes[mode]())
        if result is not None:
            return result
    return None


def _shout_one(units: list[str], rng: random.Random) -> str:
    """The sentences joined, one of them in capitals."""
    i = rng.randrange(len(units))
    return "".join(unit.upper() if j == i else unit for j, unit in enumerate(units))


def whitespace(text: str, rng: random.Random) -> str | None:
    """Between random words: double spaces, line breaks or no space at all (needs two words)."""
    gaps = list(re.finditer(r"\s+", text.strip()))
    if not gaps:
        return None
    stripped = text.strip()
    chosen = sorted(rng.sample(gaps, max(1, len(gaps) // 10)), key=lambda m: m.start())
    parts, position = [], 0
    for gap in chosen:
        replacement = rng.choice(("  ", "\n", "", "   \n"))
        if replacement == gap.group():
            replacement = gap.group() + " "
        parts += [stripped[position : gap.start()], replacement]
        position = gap.end()
    return _changed(text, "".join(parts) + stripped[position:])


def duplicate(text: str, rng: random.Random) -> str | None:
    """Repeat a sentence (when there are several) or a run of two to five words."""
    units = sentences(text)
    if len(units) >= 2:
        i = rng.randrange(len(units))
        unit = units[i] if units[i][-1:].isspace() else units[i] + " "
        return _changed(text, "".join(units[:i] + [unit] + units[i:]))
    words = list(_WORD.finditer(text))
    if not words:
        return None
    start = rng.randrange(len(words))
    end = min(len(words), start + rng.randint(2, 5)) - 1
    fragment = text[words[start].start() : words[end].end()]
    cut = words[end].end()
    return _changed(text, f"{text[:cut]} {fragment}{text[cut:]}")


# ---------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Operator:
    """A named degradation: its kind, the function, and the pair fields it may change."""

    name: str
    kind: Literal["removal", "noise"]
    apply: OperatorFn
    fields: tuple[PairField, ...] = BOTH


OPERATORS: dict[str, Operator] = {
    op.name: op
    for op in (
        Operator("drop_sentences", "removal", drop_sentences),
        Operator("drop_steps", "removal", drop_steps),
        Operator("truncate", "removal", truncate),
        Operator("bare_answer", "removal", bare_answer, ("completion",)),
        Operator("vague", "removal", vague),
        Operator("typos", "noise", typos),
        Operator("casing", "noise", casing),
        Operator("whitespace", "noise", whitespace),
        Operator("duplicate", "noise", duplicate),
    )
}
LLM_OPERATOR = "llm_rewrite"
"""The name recorded for a variant written by a language model."""


@dataclass(frozen=True)
class Variant:
    """A degraded (prompt, completion) pair and the operators that made it, in order."""

    prompt: str
    completion: str
    operators: tuple[str, ...]


def _apply(op: Operator, pair: dict[str, str], rng: random.Random) -> bool:
    """Apply an operator to one of its fields; True if it did.

    Noise picks the field at random; a removal tries the completion first, three times in four.
    """
    fields = list(op.fields)
    if op.kind == "noise":
        rng.shuffle(fields)
    elif rng.random() < 0.25:
        fields.reverse()
    for name in fields:
        result = op.apply(pair[name], rng)
        if result is not None:
            pair[name] = result
            return True
    return False


def degrade_pair(
    prompt: str,
    completion: str,
    rng: random.Random,
    operators: Sequence[str] = tuple(OPERATORS),
    max_operators: int = 3,
) -> Variant | None:
    """A variant made by 1 to `max_operators` of the named operators; None if none applies.

    The first operator changes the completion: a removal when one applies (the variant loses
    information), else a noise operator. The others are drawn from all named operators and
    change either field. Operators that cannot apply are skipped.
    """
    pair = {"prompt": prompt, "completion": completion}
    wanted = rng.randint(1, max_operators)
    removals = [name for name in operators if OPERATORS[name].kind == "removal"]
    noise = [name for name in operators if OPERATORS[name].kind == "noise"]
    used: list[str] = []
    for name in rng.sample(removals, len(removals)) + rng.sample(noise, len(noise)):
        result = OPERATORS[name].apply(completion, rng)
        if result is not None:
            pair["completion"] = result
            used.append(name)
            break
    for name in rng.sample(list(operators), len(operators)):
        if len(used) >= wanted:
            break
        if name not in used and _apply(OPERATORS[name], pair, rng):
            used.append(name)
    if (pair["prompt"], pair["completion"]) == (prompt, completion):
        return None
    return Variant(pair["prompt"], pair["completion"], tuple(used))


# ---------------------------------------------------------------------------- LLM degradations

LLM_SYSTEM_PROMPT = (
    "You help build training data for a model that repairs poor examples. Given a good "
    "question-and-answer example, you write a worse version of the same example, the kind "
    "of low-quality sample found in scraped instruction data. Keep the same topic. Never "
    "explain what you changed.\n"
    "Reply with only the worse example, in exactly this form:\n"
    "Q: <the question>\nA: <the answer>"
)
LLM_USER_PROMPT = (
    "Make this example worse as follows: {damage}\n"
    "Variant number: {number}\n\n"
    "Q: {prompt}\nA: {completion}"
)
LLM_DAMAGE = (
    "leave out some of the facts, so the answer is incomplete.",
    "skip steps of the reasoning, so the answer is hard to follow.",
    "give only a short final answer with no explanation.",
    "make the wording vague: replace numbers, names and specifics with words like 'some' or 'a thing'.",
    "write it carelessly, with spelling mistakes and a missing detail.",
)


def llm_degrade_messages(prompt: str, completion: str, number: int) -> list[dict]:
    """The chat messages asking a model for variant `number` of a worse (prompt, completion)."""
    damage = LLM_DAMAGE[number % len(LLM_DAMAGE)]
    user = LLM_USER_PROMPT.format(
        damage=damage, number=number + 1, prompt=prompt.strip(), completion=completion.strip()
    )
    return [
        {"role": "system", "content": LLM_SYSTEM_PROMPT},
        {"role": "user", "content": user},
    ]


def parse_llm_degradation(text: str) -> tuple[str, str] | None:
    """The (prompt, completion) of a model's `Q: ... A: ...` reply; None when it has no such pair."""
    parts = task_parts(text, "qa")
    return None if parts is None else (parts["prompt"], parts["completion"])
