"""A distilled cluster's reply, parsed and checked: the draft, why it is rejected, its record.

`make_draft` parses one reply (one candidate) into its answer and pair; `finish_draft` runs
the faithfulness checks and the verifiers on it and gives the distilled record, or its reject
with the first reason in the order `stages.distill`'s module doc lists; `best_candidate` keeps
one of a cluster's candidates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmmixup.backends.base import Generation
from lmmixup.backends.embed import record_text
from lmmixup.config import DistillConfig
from lmmixup.method.faithfulness import check_faithfulness
from lmmixup.method.reply import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    ParsedOutput,
    ReplyFormat,
    answer_to_pair,
    reply_format,
)
from lmmixup.method.verify import Verification, verify_pair
from lmmixup.runtime.executor import REJECT_KEY

GENERATION_ERROR = "generation_error"
UNCLOSED_ANSWER = "unclosed_answer"


def distilled_id(cluster_id: Any) -> str:
    """The id of the pair distilled from a cluster."""
    return f"mix-{cluster_id}"


def closed_reply(generation: Generation) -> str:
    """The reply as the model wrote it: `</answer>` put back where one of the request's stop
    strings ended it (backends leave the stop string out): `</answer>` itself, or one of
    `extra_stops`. A reply that ended otherwise (end of sequence, length) stays as it is, so
    an answer the model never closed stays unclosed."""
    text = generation.text
    if generation.finish_reason == "stop" and ANSWER_OPEN in text and ANSWER_CLOSE not in text:
        return text + ANSWER_CLOSE
    return text


@dataclass(frozen=True)
class Draft:
    """One cluster's reply, parsed as far as it goes."""

    cluster: Mapping[str, Any]
    members: Sequence[Mapping[str, Any]]
    task_type: str
    member_texts: list[str]
    generation: Generation
    form: ReplyFormat | None
    pair: tuple[str, str] | None

    @property
    def parsed(self) -> ParsedOutput | None:
        """The reply's think and answer blocks, None without a closed answer."""
        return None if self.form is None else self.form.parsed

    @property
    def text(self) -> str | None:
        """The distilled pair as embedded, None without a pair."""
        if self.pair is None:
            return None
        return record_text({"prompt": self.pair[0], "completion": self.pair[1]})


def make_draft(
    cluster: Mapping[str, Any],
    members: Sequence[Mapping[str, Any]],
    task_type: str,
    generation: Generation,
) -> Draft:
    """Parse a cluster's reply into its answer and, where the layout holds, its pair."""
    form = reply_format(closed_reply(generation), task_type) if generation.ok else None
    parsed = None if form is None else form.parsed
    pair = answer_to_pair(parsed.answer, task_type) if parsed is not None else None
    member_texts = [record_text(member) for member in members]
    return Draft(cluster, members, task_type, member_texts, generation, form, pair)


def reject_reason(draft: Draft, flags: Sequence[str]) -> str | None:
    """Why a draft is rejected (the first reason in the module doc's order), None when it is kept."""
    if not draft.generation.ok:
        return GENERATION_ERROR
    if "truncated" in flags:
        return "truncated"
    if draft.form is not None and draft.form.unclosed:
        return UNCLOSED_ANSWER
    if draft.parsed is None:
        return "unparsable"
    if draft.parsed.answer and draft.pair is None:
        return "format"
    return flags[0] if flags else None


def finish_draft(
    draft: Draft, vectors: np.ndarray | None, cfg: DistillConfig, model: str
) -> dict[str, Any]:
    """The distilled record of a draft, or its reject (carrying `REJECT_KEY`)."""
    verification: Verification | None = None
    if draft.pair is not None:
        verification = verify_pair(*draft.pair, draft.members, cfg)
    faithfulness = check_faithfulness(
        draft.text,
        draft.member_texts,
        cfg=cfg,
        finish_reason=draft.generation.finish_reason,
        text_vector=None if vectors is None else vectors[0],
        member_vectors=None if vectors is None else vectors[1:],
        redundant=verification is not None
        and verification.min_member_coverage >= cfg.redundant_coverage,
    )
    flags = [*faithfulness.flags, *(() if verification is None else verification.flags)]
    checks = faithfulness.as_dict()
    if verification is not None:
        checks.update(verification.as_dict())
    checks["flags"] = flags
    cluster = draft.cluster
    record: dict[str, Any] = {"id": distilled_id(cluster["cluster_id"])}
    if draft.pair is not None:
        record.update(prompt=draft.pair[0], completion=draft.pair[1])
    record.update(
        source=cluster.get("source"),
        task_type=draft.task_type,
        cluster_id=cluster["cluster_id"],
        member_ids=list(cluster["member_ids"]),
        think=None if draft.parsed is None else draft.parsed.think,
        raw_output=draft.generation.text,
        model=model,
        finish_reason=draft.generation.finish_reason,
        checks=checks,
    )
    reason = reject_reason(draft, flags)
    if reason is not None:
        record[REJECT_KEY] = reason
    if draft.generation.error is not None:
        record["error"] = draft.generation.error
    return record


def best_candidate(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The kept record of a cluster's candidates: the passing one with the highest coverage
    (first wins a tie), else the first candidate (its reject); notes how many were tried."""
    passing = [index for index, record in enumerate(records) if REJECT_KEY not in record]
    index = max(passing, key=lambda i: records[i]["checks"]["coverage"]) if passing else 0
    if len(records) == 1:
        return records[0]
    return {**records[index], "candidates": len(records), "candidate": index}
