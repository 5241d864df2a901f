"""Faithfulness of a distilled pair to the members it merges: copy overlap and embedding drift."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

import numpy as np

from lmmixup.config import DistillConfig


@dataclass(frozen=True)
class Faithfulness:
    """What the guard found: reasons to reject (empty when none) and the measured values."""

    flags: tuple[str, ...]
    member_similarity: float | None = None
    copy_overlap: float | None = None

    def as_dict(self) -> dict:
        """The JSON form stored on records."""
        return {
            "flags": list(self.flags),
            "member_similarity": _rounded(self.member_similarity),
            "copy_overlap": _rounded(self.copy_overlap),
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


_WORD = re.compile(r"\w+|[^\w\s]")


def word_tokens(text: str) -> list[str]:
    """The lower-cased words and punctuation marks of a text, as the copy check compares them."""
    return _WORD.findall(text.lower())


def copy_overlap(text: str, member_texts: Sequence[str]) -> float:
    """The highest word-level similarity (difflib ratio, 0..1) between the text and one member.

    The cheap upper bounds skip members that cannot beat the best so far, so the exact
    (quadratic in the worst case) ratio is computed for few members.
    """
    matcher = SequenceMatcher(None, autojunk=False)
    matcher.set_seq2(word_tokens(text))
    best = 0.0
    for member in member_texts:
        matcher.set_seq1(word_tokens(member))
        if matcher.real_quick_ratio() > best and matcher.quick_ratio() > best:
            best = max(best, matcher.ratio())
    return best


def check_faithfulness(
    distilled_text: str | None,
    member_texts: Sequence[str],
    *,
    cfg: DistillConfig,
    finish_reason: str = "stop",
    text_vector: np.ndarray | None = None,
    member_vectors: np.ndarray | None = None,
    redundant: bool = False,
) -> Faithfulness:
    """Flags, in this order: truncated, empty, copy, drift (see the module doc).

    `distilled_text` is the distilled pair as embedded (`prompt` newline `completion`), None
    when there is none. Drift is checked only when unit vectors for the text and members are
    given: the mean cosine to the members must reach `cfg.min_member_similarity`. A copy of
    one member is no fault when the members are `redundant` (each says what the copy says):
    keeping one of them is then the merge.
    """
    flags = ["truncated"] if finish_reason == "length" else []
    if distilled_text is None or not distilled_text.strip():
        return Faithfulness((*flags, "empty"))
    overlap = copy_overlap(distilled_text, member_texts)
    if overlap >= cfg.max_copy_overlap and not redundant:
        flags.append("copy")
    similarity = None
    if text_vector is not None and member_vectors is not None:
        similarity = float(np.mean(member_vectors @ text_vector))
        if similarity < cfg.min_member_similarity:
            flags.append("drift")
    return Faithfulness(tuple(flags), similarity, overlap)
