"""Stage 4: the distiller merges each cluster of low-quality pairs into one high-quality pair.

A cluster's members are linearised (`Q:`/`A:` blocks) under a merge instruction; the model
answers `<think>...</think><answer>...</answer>`; the answer is parsed into a (prompt,
completion) pair by its task type's layout (`lmmixup.method.tasks`) and checked for faithfulness
to the members. Every cluster ends as one distilled record or one reject with its reason:

- generation_error: the backend failed on this cluster (retried on the next run);
- truncated: the model ran out of tokens (`finish_reason == "length"`) before `</answer>`;
- unclosed_answer: the model ended the reply (end of sequence) inside its `<answer>` block;
- unparsable: no `<answer>` block;
- format: the answer does not follow the task type's layout;
- empty: the answer block is blank;
- copy: the pair repeats one member near verbatim (no merging happened);
- drift: the pair is far, in embedding space, from the members it should merge.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lmmixup.backends.base import Generation, Generator, GenParams
from lmmixup.backends.embed import record_text
from lmmixup.config import DistillConfig
from lmmixup.errors import LmmixupError
from lmmixup.io.cache import CallCache
from lmmixup.io.jsonl import read_records
from lmmixup.io.validate import CLUSTER_RECORD, POOL_RECORD, numbered_checked, read_checked
from lmmixup.method.tasks import matches_task_pattern, task_format, task_parts
from lmmixup.runtime.runner import REJECT_KEY, BatchFn, process_records

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TRUNCATION_MARKER = " [...]"
GENERATION_ERROR = "generation_error"
UNCLOSED_ANSWER = "unclosed_answer"
PARAGRAPH_PROMPT = "Continue this paragraph: {opening}"

SYSTEM_PROMPT = (
    "You merge a group of related examples into one better example. Keep all the essential "
    "information of the group, drop repetition and mistakes, and make the result clear, "
    "correct and complete.\n"
    "Reply with exactly these two blocks and nothing outside them:\n"
    "<think>\nshort notes on what to keep and how to combine it\n</think>\n"
    "<answer>\nthe merged example, in the layout the user asks for\n</answer>"
)
# The layout comes last, right before the reply: a small model follows what it read last.
USER_PROMPT = (
    "Merge these {count} examples into a single coherent, high-quality example.\n\n{examples}"
    "\n\nThe merged example is {description}. Write it in the <answer> block in this layout:\n"
    "{layout}"
)


# ---------------------------------------------------------------------------- the prompt


def _cut(text: str, limit: int) -> str:
    """The text, or its first `limit` characters followed by the truncation marker."""
    return text if len(text) <= limit else text[:limit].rstrip() + TRUNCATION_MARKER


def _member_block(member: Mapping[str, Any], max_chars: int) -> str:
    """One member as `Q: prompt` / `A: completion`, at most `max_chars` characters of content.

    The prompt may use half the room, or more when the completion is short; the completion
    gets the rest.
    """
    prompt, completion = member["prompt"].strip(), member["completion"].strip()
    prompt_room = max(max_chars // 2, max_chars - len(completion))
    completion_room = max_chars - min(len(prompt), prompt_room)
    return f"Q: {_cut(prompt, prompt_room)}\nA: {_cut(completion, completion_room)}"


def linearise(members: Sequence[Mapping[str, Any]], max_member_chars: int) -> str:
    """The members as `Q:`/`A:` blocks separated by blank lines, each cut to `max_member_chars`."""
    return "\n\n".join(_member_block(member, max_member_chars) for member in members)


def build_messages(
    members: Sequence[Mapping[str, Any]], task_type: str, cfg: DistillConfig
) -> list[dict]:
    """The chat messages asking the distiller to merge a cluster into one pair of `task_type`."""
    task = task_format(task_type)
    user = USER_PROMPT.format(
        count=len(members),
        examples=linearise(members, cfg.max_member_chars),
        description=task.description,
        layout=task.layout,
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


# ---------------------------------------------------------------------------- the reply


@dataclass(frozen=True)
class ParsedOutput:
    """A distiller reply's first think block (None when absent) and first answer block."""

    think: str | None
    answer: str


def _think_block(text: str) -> tuple[str | None, int]:
    """The first closed think block that opens before any answer, and where it ends (else 0)."""
    opened = text.find(THINK_OPEN)
    answer = text.find(ANSWER_OPEN)
    if opened < 0 or 0 <= answer < opened:
        return None, 0
    closed = text.find(THINK_CLOSE, opened)
    if closed < 0:
        return None, 0
    return text[opened + len(THINK_OPEN) : closed].strip(), closed + len(THINK_CLOSE)


def _answer_span(text: str) -> tuple[str | None, int, int]:
    """The think block, where the first answer block's body starts and where it closes
    (-1 when there is no `<answer>`, or no `</answer>` after it)."""
    think, start = _think_block(text)
    opened = text.find(ANSWER_OPEN, start)
    if opened < 0:
        return think, -1, -1
    body = opened + len(ANSWER_OPEN)
    return think, body, text.find(ANSWER_CLOSE, body)


def parse_output(text: str) -> ParsedOutput | None:
    """The think and answer blocks of a reply; None without a closed `<answer>` block.

    The answer is the text between the first `<answer>` and the first `</answer>` after it;
    anything after that is ignored. Tags written inside the think block do not count.
    Both blocks are stripped of surrounding whitespace.
    """
    think, body, closed = _answer_span(text)
    if closed < 0:
        return None
    return ParsedOutput(think, text[body:closed].strip())


_BLOCK_BODY = r"(?:(?!</?(?:think|answer)>).)*"
_WELL_FORMED = re.compile(
    rf"\s*<think>{_BLOCK_BODY}</think>\s*<answer>{_BLOCK_BODY}</answer>\s*", re.DOTALL
)


def is_well_formed(text: str) -> bool:
    """Whether the whole reply is one think block then one answer block, only whitespace around."""
    return _WELL_FORMED.fullmatch(text) is not None


@dataclass(frozen=True)
class ReplyFormat:
    """How a distiller reply is formed: the one reading `distill`, `eval distiller` and the
    GRPO format reward share (see `reply_format`)."""

    parsed: ParsedOutput | None
    """The think block and the first closed answer block (`parse_output`); None without one."""
    unclosed: bool
    """An `<answer>` block opened and never closed: no answer, in every reading."""
    well_formed: bool
    """The whole reply is one think block then one answer block, only whitespace around."""
    layout: bool
    """The answer follows the task type's layout (paragraph: any non-blank text)."""

    @property
    def compliant(self) -> bool:
        """Well formed, and the answer in the task's layout."""
        return self.well_formed and self.layout


def reply_format(text: str, task_type: str) -> ReplyFormat:
    """How a reply's text is formed, for a task type: the one definition of a well-formed
    distiller reply.

    `text` is the reply as the model wrote it: from a backend, `closed_reply(generation)`
    (the `</answer>` a stop string stood for put back; an answer the model left open at
    end-of-sequence stays open); in GRPO, the completion, which has no stop strings.
    """
    think, body, closed = _answer_span(text)
    parsed = None if closed < 0 else ParsedOutput(think, text[body:closed].strip())
    return ReplyFormat(
        parsed=parsed,
        unclosed=body >= 0 and closed < 0,
        well_formed=is_well_formed(text),
        layout=parsed is not None and matches_task_pattern(parsed.answer, task_type),
    )


def _paragraph_pair(text: str) -> tuple[str, str] | None:
    """A paragraph as (continue-this prompt with its first sentence, the rest); None if one sentence."""
    parts = re.split(r"(?<=[.!?])\s+", text, maxsplit=1)
    if len(parts) < 2:
        return None
    opening, rest = parts
    return PARAGRAPH_PROMPT.format(opening=opening), rest


def answer_to_pair(answer: str, task_type: str) -> tuple[str, str] | None:
    """The (prompt, completion) pair an answer holds in its task type's layout; None if it lacks one.

    qa: question / answer; mcq: question with its options / the text after `Answer:`;
    tfq: the statement / `True` or `False` (with any explanation); cs: category / statement;
    paragraph: "Continue this paragraph: <first sentence>" / the remaining sentences.
    """
    parts = task_parts(answer, task_type)
    if parts is None:
        return None
    if task_type == "paragraph":
        return _paragraph_pair(parts["text"])
    return parts["prompt"], parts["completion"]


# ---------------------------------------------------------------------------- faithfulness


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


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def copy_overlap(text: str, member_texts: Sequence[str]) -> float:
    """The highest word-level similarity (difflib ratio, 0..1) between the text and one member.

    The cheap upper bounds skip members that cannot beat the best so far, so the exact
    (quadratic in the worst case) ratio is computed for few members.
    """
    matcher = SequenceMatcher(None, autojunk=False)
    matcher.set_seq2(_words(text))
    best = 0.0
    for member in member_texts:
        matcher.set_seq1(_words(member))
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
) -> Faithfulness:
    """Flags, in this order: truncated, empty, copy, drift (see the module doc).

    `distilled_text` is the distilled pair as embedded (`prompt` newline `completion`), None
    when there is none. Drift is checked only when unit vectors for the text and members are
    given: the mean cosine to the members must reach `cfg.min_member_similarity`.
    """
    flags = ["truncated"] if finish_reason == "length" else []
    if distilled_text is None or not distilled_text.strip():
        return Faithfulness((*flags, "empty"))
    overlap = copy_overlap(distilled_text, member_texts)
    if overlap >= cfg.max_copy_overlap:
        flags.append("copy")
    similarity = None
    if text_vector is not None and member_vectors is not None:
        similarity = float(np.mean(member_vectors @ text_vector))
        if similarity < cfg.min_member_similarity:
            flags.append("drift")
    return Faithfulness(tuple(flags), similarity, overlap)


# ---------------------------------------------------------------------------- the stage


class Embedder(Protocol):
    """Anything that turns texts into an (n, d) array of unit vectors."""

    def encode(self, texts: list[str]) -> np.ndarray: ...


def distilled_id(cluster_id: Any) -> str:
    """The id of the pair distilled from a cluster."""
    return f"mix-{cluster_id}"


def cluster_task_type(members: Sequence[Mapping[str, Any]], default: str) -> str:
    """The most common task type among the members (first seen wins a tie), else the default."""
    counts = Counter(member["task_type"] for member in members if member.get("task_type"))
    return counts.most_common(1)[0][0] if counts else default


def distill_params(cfg: DistillConfig) -> GenParams:
    """Decoding settings of the distiller: stop right after the answer block closes."""
    return GenParams(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        repetition_penalty=cfg.repetition_penalty,
        stop=(ANSWER_CLOSE, *cfg.extra_stops),
        assistant_prefix=cfg.answer_prefix,
    )


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
class _Draft:
    """One cluster's reply, parsed as far as it goes."""

    cluster: Mapping[str, Any]
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


def _draft(
    cluster: Mapping[str, Any],
    members: Sequence[Mapping[str, Any]],
    task_type: str,
    generation: Generation,
) -> _Draft:
    """Parse a cluster's reply into its answer and, where the layout holds, its pair."""
    form = reply_format(closed_reply(generation), task_type) if generation.ok else None
    parsed = None if form is None else form.parsed
    pair = answer_to_pair(parsed.answer, task_type) if parsed is not None else None
    member_texts = [record_text(member) for member in members]
    return _Draft(cluster, task_type, member_texts, generation, form, pair)


def _embed(drafts: Sequence[_Draft], embedder: Embedder) -> list[np.ndarray | None]:
    """Vectors (pair first, then members) for each draft with a pair, in one encode call."""
    texts: list[str] = []
    spans: list[tuple[int, int] | None] = []
    for draft in drafts:
        if draft.text is None:
            spans.append(None)
            continue
        spans.append((len(texts), len(texts) + 1 + len(draft.member_texts)))
        texts += [draft.text, *draft.member_texts]
    vectors = embedder.encode(texts) if texts else None
    return [None if span is None else vectors[span[0] : span[1]] for span in spans]


def _reason(draft: _Draft, faithfulness: Faithfulness) -> str | None:
    """Why a draft is rejected (the first reason in the module doc's order), None when it is kept."""
    if not draft.generation.ok:
        return GENERATION_ERROR
    if "truncated" in faithfulness.flags:
        return "truncated"
    if draft.form is not None and draft.form.unclosed:
        return UNCLOSED_ANSWER
    if draft.parsed is None:
        return "unparsable"
    if draft.parsed.answer and draft.pair is None:
        return "format"
    return faithfulness.flags[0] if faithfulness.flags else None


def _finish(
    draft: _Draft, vectors: np.ndarray | None, cfg: DistillConfig, model: str
) -> dict[str, Any]:
    """The distilled record of a draft, or its reject (carrying `REJECT_KEY`)."""
    faithfulness = check_faithfulness(
        draft.text,
        draft.member_texts,
        cfg=cfg,
        finish_reason=draft.generation.finish_reason,
        text_vector=None if vectors is None else vectors[0],
        member_vectors=None if vectors is None else vectors[1:],
    )
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
        checks=faithfulness.as_dict(),
    )
    reason = _reason(draft, faithfulness)
    if reason is not None:
        record[REJECT_KEY] = reason
    if draft.generation.error is not None:
        record["error"] = draft.generation.error
    return record


def _members_of(
    cluster: Mapping[str, Any], members_by_id: Mapping[str, Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """A cluster's member records, in its order; an error naming the cluster if one is missing."""
    try:
        return [members_by_id[member_id] for member_id in cluster["member_ids"]]
    except KeyError as exc:
        raise LmmixupError(
            f"cluster {cluster['cluster_id']!r} names member {exc.args[0]!r}, which is not in the pool"
        ) from None


def make_distill_fn(
    generator: Generator,
    embedder: Embedder,
    cfg: DistillConfig,
    members_by_id: Mapping[str, Mapping[str, Any]],
) -> BatchFn:
    """The batch function of the stage: cluster records in, one distilled record or reject each.

    One `generate` call and one `encode` call per batch.
    """
    params = distill_params(cfg)

    def distill_batch(clusters: list[dict]) -> list[dict]:
        members = [_members_of(cluster, members_by_id) for cluster in clusters]
        task_types = [cluster_task_type(group, cfg.default_task_type) for group in members]
        prompts = [
            build_messages(group, task_type, cfg)
            for group, task_type in zip(members, task_types, strict=True)
        ]
        generations = generator.generate(prompts, params)
        drafts = [
            _draft(*item) for item in zip(clusters, members, task_types, generations, strict=True)
        ]
        vectors = _embed(drafts, embedder)
        return [
            _finish(draft, vector, cfg, generator.name)
            for draft, vector in zip(drafts, vectors, strict=True)
        ]

    return distill_batch


def load_members(
    pool_path: str | Path,
    clusters_path: str | Path,
    clusters: Sequence[tuple[int, dict]],
    *,
    allow_empty: bool = True,
) -> dict[str, dict]:
    """The pool records the (numbered) clusters name, the pool file checked whole; an error
    naming the first cluster line with a member the pool lacks."""
    records = read_checked(pool_path, POOL_RECORD, allow_empty=allow_empty)
    pool = {record["id"]: record for record in records}
    for number, cluster in clusters:
        missing = [member_id for member_id in cluster["member_ids"] if member_id not in pool]
        if missing:
            raise LmmixupError(
                f"{clusters_path}:{number}: member {missing[0]!r} is not in {pool_path}; "
                "pass the pool the clusters were made from (--pool)"
            )
    return {member_id: pool[member_id] for _, c in clusters for member_id in c["member_ids"]}


def read_distill_inputs(
    clusters_path: str | Path, pool_path: str | Path, *, allow_empty: bool = True
) -> tuple[list[tuple[int, dict]], dict[str, dict]]:
    """The numbered cluster records and the pool records they name, both files checked
    before any model loads (an empty file is an error unless `allow_empty`)."""
    clusters = numbered_checked(clusters_path, CLUSTER_RECORD, allow_empty=allow_empty)
    return clusters, load_members(pool_path, clusters_path, clusters, allow_empty=allow_empty)


def reject_reasons(rejects_path: str | Path) -> dict[str, int]:
    """How many rejects a rejects file holds per reason."""
    path = Path(rejects_path)
    if not path.exists():
        return {}
    return dict(Counter(record["reason"] for record in read_records(path)))


def distill_clusters(
    clusters_path: str | Path,
    pool_path: str | Path,
    out_path: str | Path,
    rejects_path: str | Path,
    cfg: DistillConfig,
    cache: CallCache | None = None,
    *,
    embedder_name: str | None = None,
) -> dict[str, Any]:
    """Distil every cluster of `clusters_path` (members from `pool_path`), resuming a stopped run.

    Appends distilled records to `out_path` and rejects to `rejects_path`; a cluster with a
    record in either is not redone. Returns counts for the manifest: this run's `written`,
    `rejected` and `already_done`, plus the files' totals (`distilled`, `reject_reasons`).
    """
    from lmmixup.backends import load_generator
    from lmmixup.backends.embed import load_embedder

    numbered_clusters, members_by_id = read_distill_inputs(clusters_path, pool_path)
    # Input records carry their output's id, so the runner's resume (keyed by `id`) and
    # reject line numbers work at cluster granularity.
    clusters = [
        (number, {**cluster, "id": distilled_id(cluster["cluster_id"])})
        for number, cluster in numbered_clusters
    ]
    distill_fn = make_distill_fn(
        load_generator(cfg.generator, cache),
        load_embedder(embedder_name or cfg.embedder),
        cfg,
        members_by_id,
    )
    counts: dict[str, Any] = process_records(
        clusters,
        distill_fn,
        output=Path(out_path),
        rejects=Path(rejects_path),
        source=str(clusters_path),
        batch_size=cfg.generator.batch_size,
        retry=lambda reject: reject.get("reason") == GENERATION_ERROR,
        total=len(clusters),
        description="distill",
    )
    counts["distilled"] = len(read_records(out_path))
    counts["reject_reasons"] = reject_reasons(rejects_path)
    return counts
