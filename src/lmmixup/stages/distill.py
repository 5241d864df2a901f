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

`DistillStage` is the distiller as a per-record stage (one cluster in, one record or reject
out) that the local executor runs; `DISTILL` declares it as a stage of `lmmixup run`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmmixup.backends.base import Generation, Generator, GenParams
from lmmixup.backends.embed import record_text
from lmmixup.config import DistillConfig, RunConfig
from lmmixup.errors import LmmixupError
from lmmixup.io.cache import CallCache
from lmmixup.io.jsonl import read_records
from lmmixup.io.validate import CLUSTER_RECORD, POOL_RECORD, numbered_checked, read_checked
from lmmixup.method.faithfulness import Faithfulness, check_faithfulness
from lmmixup.method.prompt import build_messages
from lmmixup.method.reply import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    ParsedOutput,
    ReplyFormat,
    answer_to_pair,
    reply_format,
)
from lmmixup.runtime.executor import REJECT_KEY, BatchFn, LocalExecutor, RecordStage
from lmmixup.runtime.runner import StageDir
from lmmixup.runtime.spec import StageSpec
from lmmixup.types import Embedder

GENERATION_ERROR = "generation_error"
UNCLOSED_ANSWER = "unclosed_answer"


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


class DistillStage(RecordStage):
    """The distiller as a per-record stage: cluster records in, one distilled record or
    reject each.

    Built from the distill config, the pool file the members come from, the call cache's
    path (None: no cache) and the embedder's name (default: the config's). `open()` loads
    the generator and the embedder and indexes the pool by id. A cluster the backend failed
    on (`generation_error`) is retried on the next run; every other reject is final.
    """

    description = "distill"

    def __init__(
        self,
        cfg: DistillConfig,
        pool: Path,
        cache_path: Path | None = None,
        embedder: str | None = None,
    ):
        self.cfg = cfg
        self.pool = pool
        self.cache_path = cache_path
        self.embedder = embedder or cfg.embedder
        self.batch_size = cfg.generator.batch_size
        self._cache: CallCache | None = None
        self._distill: BatchFn | None = None

    def open(self) -> None:
        from lmmixup.backends import load_generator
        from lmmixup.backends.embed import load_embedder

        self._cache = None if self.cache_path is None else CallCache(self.cache_path)
        members_by_id = {record["id"]: record for record in read_records(self.pool)}
        self._distill = make_distill_fn(
            load_generator(self.cfg.generator, self._cache),
            load_embedder(self.embedder),
            self.cfg,
            members_by_id,
        )

    def process(self, batch: list[dict]) -> list[dict]:
        return self._distill(batch)

    def retry(self, reject: dict) -> bool:
        return reject.get("reason") == GENERATION_ERROR

    def close(self) -> dict[str, Any]:
        report: dict[str, Any] = {}
        if self._cache is not None:
            report["cache"] = self._cache.stats()
            self._cache.close()
        self._distill = self._cache = None
        return report


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
    numbered_clusters, _ = read_distill_inputs(clusters_path, pool_path)
    # Input records carry their output's id, so the executor's resume (keyed by `id`) and
    # reject line numbers work at cluster granularity.
    clusters = [
        (number, {**cluster, "id": distilled_id(cluster["cluster_id"])})
        for number, cluster in numbered_clusters
    ]
    stage = DistillStage(cfg, Path(pool_path), None if cache is None else cache.path, embedder_name)
    run = LocalExecutor().run(
        stage,
        clusters,
        output=Path(out_path),
        rejects=Path(rejects_path),
        source=str(clusters_path),
        total=len(clusters),
    )
    if cache is not None and "cache" in run.report:
        cache.count_use(run.report["cache"])
    counts: dict[str, Any] = dict(run.counts)
    counts["distilled"] = len(read_records(out_path))
    counts["reject_reasons"] = reject_reasons(rejects_path)
    return counts


def _run_distill(stage: StageDir, cfg: RunConfig, inputs: dict[str, Path]) -> None:
    counts = distill_clusters(
        inputs["clusters"],
        inputs["low"],
        stage.file("distilled.jsonl"),
        stage.file("rejects.jsonl"),
        cfg.distill,
        CallCache(),
    )
    stage.counts.update(counts)
    failed = counts["reject_reasons"].get(GENERATION_ERROR, 0)
    if failed:
        stage.partial = f"{failed} clusters failed in the distiller; re-run to retry them"


DISTILL = StageSpec(
    "distill",
    sections=("distill",),
    reads={"clusters": "cluster.clusters", "low": "split.low"},
    outputs={"distilled": "distilled.jsonl", "rejects": "rejects.jsonl"},
    run=_run_distill,
)
