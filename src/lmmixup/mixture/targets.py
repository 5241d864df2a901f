"""Targets: a seed written in one task type's `<answer>` layout, and two qa targets merged.

The task types a seed supports:

- qa: any seed. A GSM8K-style seed answers `The answer is N.` and, with `cot`, its worked
  solution becomes the `think`; without `cot` the solution is part of the answer.
- mcq / tfq: GSM8K-style seeds with a numeric answer. Distractors are the answer moved by
  small offsets, doubled, halved or times ten. tfq states the right answer or a distractor,
  then the problem. Their `think` (with `cot`) is the worked solution plus one generated
  sentence naming the right option or label.
- paragraph: prose completions (no code, lists, headings or tables, three sentences or more);
  the answer is the completion as one paragraph.
- cs: prose seeds whose `meta` has a `category`, `topic` or `subject`: `C:` that value, `S:`
  the paragraph.

Every target is checked against its layout (`tasks.task_parts` must find exactly its parts);
one that does not parse back (e.g. a question containing `A:`) is None. Targets other than
GSM8K-style ones have no `think` (we do not invent reasoning).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from decimal import Decimal

from lmmixup.method.tasks import task_parts
from lmmixup.mixture.config import MixtureConfig
from lmmixup.mixture.seeds import Seed, is_prose

_NUMERIC = re.compile(r"^-?\d+(?:\.\d+)?$")
_DISTRACTOR_OFFSETS = (1, 2, 3, 5, 10)


@dataclass(frozen=True)
class Target:
    """A task-type answer, its optional think, and the clean pair its variants degrade."""

    task_type: str
    answer: str
    think: str | None
    prompt: str
    completion: str


def _checked(target: Target, **expected: str) -> Target | None:
    """The target if its answer parses back into exactly the expected layout parts, else None."""
    parts = task_parts(target.answer, target.task_type)
    return target if parts == {name: text.strip() for name, text in expected.items()} else None


def _paragraph(text: str) -> str:
    """The text as one paragraph (runs of whitespace become one space)."""
    return " ".join(text.split())


def _worked(seed: Seed) -> str:
    """A GSM8K-style seed's clean solution with its `#### N` line."""
    return f"{seed.steps}\n#### {seed.final}"


def qa_target(seed: Seed, cot: bool) -> Target | None:
    """`Q:` the prompt, `A:` the completion (GSM8K-style: the result, the solution as think)."""
    if seed.final is None:
        answer = f"Q: {seed.prompt}\nA: {seed.completion}"
        target = Target("qa", answer, None, seed.prompt, seed.completion)
        return _checked(target, prompt=seed.prompt, completion=seed.completion)
    result = f"The answer is {seed.final}."
    reply = result if cot else f"{seed.steps}\n{result}"
    think = seed.steps if cot else None
    target = Target("qa", f"Q: {seed.prompt}\nA: {reply}", think, seed.prompt, _worked(seed))
    return _checked(target, prompt=seed.prompt, completion=reply)


def as_number(text: str) -> Decimal | None:
    """The number a final answer states (`18`, `-3`, `0.5`), None when it is not one."""
    return Decimal(text) if _NUMERIC.match(text) else None


def format_number(value: Decimal) -> str:
    """A number without a needless decimal part (`36`, not `36.0`)."""
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def distractors(final: str, rng: random.Random, count: int = 3) -> list[str]:
    """`count` wrong answers near a numeric answer: small offsets, doubled, halved, times ten.

    They are distinct, differ from the answer, keep its sign and, for a whole number, are
    whole numbers.
    """
    value = as_number(final)
    if value is None:
        raise ValueError(f"not a number: {final!r}")
    candidates = [value + offset for offset in _DISTRACTOR_OFFSETS]
    candidates += [value - offset for offset in _DISTRACTOR_OFFSETS]
    candidates += [value * 2, value / 2, value * 10, value * 3]
    whole = value == value.to_integral_value()
    right = format_number(value)
    options = {
        format_number(c): None
        for c in candidates
        if (c >= 0 or value < 0) and (not whole or c == c.to_integral_value())
    }
    options.pop(right, None)
    return rng.sample(list(options), count)


def mcq_target(seed: Seed, rng: random.Random, cot: bool) -> Target | None:
    """Four options (the answer once, three distractors) in random order; `Answer:` its letter."""
    options = [*distractors(seed.final, rng), format_number(as_number(seed.final))]
    rng.shuffle(options)
    letter = "ABCD"[options.index(format_number(as_number(seed.final)))]
    lines = "\n".join(f"{label}) {option}" for label, option in zip("ABCD", options, strict=True))
    question = f"{seed.prompt}\n{lines}"
    think = f"{seed.steps}\nThe answer is {seed.final}: option {letter}." if cot else None
    completion = f"{_worked(seed)}\nAnswer: {letter}"
    target = Target("mcq", f"Q: {question}\nAnswer: {letter}", think, question, completion)
    return _checked(target, prompt=question, completion=letter)


def tfq_target(seed: Seed, rng: random.Random, label: bool, cot: bool) -> Target | None:
    """A stated answer (right when `label`, else a distractor), then the problem; True/False.

    The statement does not end in `The answer is N.`, the sentence that closes GSM8K-style
    qa answers (docs/BENCHMARKS.md: this alone did not teach the SmolLM2 recipe the verdict).
    """
    shown = seed.final if label else distractors(seed.final, rng, 1)[0]
    statement = f"The answer to this problem is {shown}: {seed.prompt}"
    verdict = str(label)
    think = (
        f"{seed.steps}\nThe answer is {seed.final}, so the statement is {verdict.lower()}."
        if cot
        else None
    )
    completion = f"{_worked(seed)}\nSo the statement is {verdict}."
    target = Target(
        "tfq",
        f"Statement: {statement}\nAnswer: {verdict}",
        think,
        f"True or false? {statement}",
        completion,
    )
    return _checked(target, prompt=statement, completion=verdict)


def paragraph_target(seed: Seed) -> Target | None:
    """The completion as one paragraph."""
    text = _paragraph(seed.completion)
    return _checked(Target("paragraph", text, None, seed.prompt, text), text=text)


def cs_target(seed: Seed) -> Target | None:
    """`C:` the seed's category, `S:` its completion as one paragraph."""
    text = _paragraph(seed.completion)
    target = Target("cs", f"C: {seed.category}\nS: {text}", None, seed.prompt, text)
    return _checked(target, prompt=seed.category or "", completion=text)


def supported_tasks(seed: Seed) -> list[str]:
    """The task types a seed can be written as (see the module doc)."""
    if seed.final is not None:
        return ["qa", "mcq", "tfq"] if as_number(seed.final) is not None else ["qa"]
    if not is_prose(seed.completion):
        return ["qa"]
    return ["qa", "paragraph", "cs"] if seed.category else ["qa", "paragraph"]


def build_target(
    seed: Seed, task_type: str, rng: random.Random, cfg: MixtureConfig, label: bool
) -> Target | None:
    """The seed written as `task_type` (`label` is a tfq's truth); None if the layout fails."""
    if task_type == "mcq":
        return mcq_target(seed, rng, cfg.cot)
    if task_type == "tfq":
        return tfq_target(seed, rng, label, cfg.cot)
    if task_type == "paragraph":
        return paragraph_target(seed)
    if task_type == "cs":
        return cs_target(seed)
    return qa_target(seed, cfg.cot)


def merge_targets(first: Target, second: Target) -> Target | None:
    """Two qa targets as one: questions and answers numbered 1. and 2.; thinks likewise.

    The merged target has no pair of its own: its members are variants of the two targets.
    """
    one, two = task_parts(first.answer, "qa"), task_parts(second.answer, "qa")
    question = f"1. {one['prompt']}\n2. {two['prompt']}"
    reply = f"1. {one['completion']}\n2. {two['completion']}"
    thinks = [f"{n}. {t.think}" for n, t in enumerate((first, second), 1) if t.think]
    merged = Target("qa", f"Q: {question}\nA: {reply}", "\n".join(thinks) or None, "", "")
    return _checked(merged, prompt=question, completion=reply)
