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
- copy: the pair repeats one member near verbatim (no merging happened), unless the members
  are redundant (the pair keeps `redundant_coverage` of every member's key terms: keeping one
  of them is the merge);
- drift: the pair is far, in embedding space, from the members it should merge;
- the verifiers of `lmmixup.method.verify`, in this order: near_copy (one member repeated
  with an ending no member has), answer_mismatch (the pair's final answer is none of the
  members'), spliced (one member's question with another's answer), no_final_answer
  (members state one, the pair none), wrong_arithmetic (a written equation that does not
  hold), unsupported_number, placeholder (e.g. `[your_spot_limit]`), leaked_instruction (the
  distiller's own prompt words), unsupported_entity, unfinished (ends on a colon),
  low_coverage, dropped_member (a member left out);
- incoherent: the cluster stage marked the cluster `"coherent": false` (cohesion below its
  floor); it is not sent to the model and its members stay unselected low-quality rows.

Every distilled record and every reject's record carries `checks`: the measured values
(`copy_overlap`, `member_similarity`, `answer`, `answer_agrees`, `unsupported_numbers`,
`placeholders`, `unsupported_entities`, `near_copy`, `coverage`, `min_member_coverage`,
`spliced`, `leaked`) and all the `flags` found.

Best-of-n (`candidates` > 1): the first candidate is the single reply of `candidates: 1`; the
others are sampled at `candidate_temperature`, candidate i with seed i (so each is a distinct
sample with its own call-cache entry), one generate call per candidate for the whole batch.
The kept candidate is the one with the highest coverage among those passing every check
(first wins a tie); when none passes, the cluster's reject is its first candidate's. The
record says how many candidates were tried (`candidates`) and which one it is (`candidate`).

`DistillStage` is the distiller as a per-record stage (one cluster in, one record or reject
out) that the run's executor (local, or Ray) runs; `DISTILL` declares it as a stage of `lmmixup run`.
Its batch is `distill_requests`, the model's replies, then `complete_clusters` (the parsing and
checks are `distill_drafts`'), so an executor can make the model calls itself (`RequestStage`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from lmmixup.backends.base import Generation, Generator, GenParams, usage_of
from lmmixup.backends.coalesce import CoalescingEncoder
from lmmixup.config import BackendConfig, DistillConfig, RunConfig
from lmmixup.errors import LmmixupError
from lmmixup.io.cache import CallCache
from lmmixup.io.jsonl import read_records
from lmmixup.io.validate import CLUSTER_RECORD, POOL_RECORD, numbered_checked, read_checked
from lmmixup.io.vectors import SavedVectors, load_vectors, vectors_beside
from lmmixup.method.prompt import build_messages
from lmmixup.method.reply import ANSWER_CLOSE
from lmmixup.runtime.executor import REJECT_KEY, BatchFn, stage_sizing
from lmmixup.runtime.executors import current_executor
from lmmixup.runtime.requests import Request, RequestStage, generate_requests
from lmmixup.runtime.runner import StageDir
from lmmixup.runtime.spec import StageSpec
from lmmixup.stages.distill_drafts import (
    GENERATION_ERROR,
    best_candidate,
    distilled_id,
    finish_draft,
    make_draft,
)
from lmmixup.stages.distill_vectors import pair_and_member_vectors
from lmmixup.stages.failures import distill_failures, first_error
from lmmixup.types import Embedder

INCOHERENT = "incoherent"


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


def candidate_params(cfg: DistillConfig) -> list[GenParams]:
    """The decoding settings of each candidate: the single reply's, then `candidates - 1`
    samples at `candidate_temperature`, candidate i with seed i (distinct samples, each with
    its own cache entry)."""
    first = distill_params(cfg)
    sampled = replace(first, temperature=cfg.candidate_temperature)
    return [first, *(replace(sampled, seed=i) for i in range(1, cfg.candidates))]


def is_coherent(cluster: Mapping[str, Any]) -> bool:
    """Whether a cluster may be distilled: not marked `"coherent": false` by the cluster stage
    (cluster files written before the cohesion floor have no mark and are coherent)."""
    return cluster.get("coherent", True) is not False


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


def incoherent_reject(cluster: Mapping[str, Any]) -> dict[str, Any]:
    """The reject of a cluster the cluster stage marked incoherent: no model call."""
    return {
        "id": distilled_id(cluster["cluster_id"]),
        "source": cluster.get("source"),
        "cluster_id": cluster["cluster_id"],
        "member_ids": list(cluster["member_ids"]),
        "cohesion": cluster.get("cohesion"),
        REJECT_KEY: INCOHERENT,
    }


def distill_requests(
    clusters: list[dict], members_by_id: Mapping[str, Mapping[str, Any]], cfg: DistillConfig
) -> list[list[Request]]:
    """Per cluster, the distiller's requests: one per candidate (`candidate_params`), none
    for a cluster marked incoherent."""
    params = candidate_params(cfg)
    asked: list[list[Request]] = []
    for cluster in clusters:
        if not is_coherent(cluster):
            asked.append([])
            continue
        members = _members_of(cluster, members_by_id)
        messages = build_messages(members, cluster_task_type(members, cfg.default_task_type), cfg)
        asked.append([Request(messages, candidate) for candidate in params])
    return asked


def complete_clusters(
    clusters: list[dict],
    replies: list[list[Generation]],
    embedder: Embedder,
    cfg: DistillConfig,
    members_by_id: Mapping[str, Mapping[str, Any]],
    saved: SavedVectors | None,
    model: str,
) -> list[dict]:
    """Per cluster, its distilled record or reject from its candidates' replies (the answers
    to `distill_requests`): one `encode` call for the batch (the pairs, and the members
    without a `saved` vector); a cluster marked incoherent is rejected without either."""
    coherent = [index for index, cluster in enumerate(clusters) if is_coherent(cluster)]
    members = {i: _members_of(clusters[i], members_by_id) for i in coherent}
    task_types = {i: cluster_task_type(members[i], cfg.default_task_type) for i in coherent}
    drafts = [  # candidate by candidate, as the generate calls came back
        make_draft(clusters[i], members[i], task_types[i], replies[i][candidate])
        for candidate in range(cfg.candidates)
        for i in coherent
    ]
    vectors = pair_and_member_vectors(
        [(d.text, d.members, d.member_texts) for d in drafts], embedder, saved
    )
    records = [
        finish_draft(draft, vector, cfg, model)
        for draft, vector in zip(drafts, vectors, strict=True)
    ]
    count = len(coherent)
    best = {i: best_candidate(records[place::count]) for place, i in enumerate(coherent)}
    return [best[i] if i in best else incoherent_reject(c) for i, c in enumerate(clusters)]


def make_distill_fn(
    generator: Generator,
    embedder: Embedder,
    cfg: DistillConfig,
    members_by_id: Mapping[str, Mapping[str, Any]],
    saved: SavedVectors | None = None,
) -> BatchFn:
    """The batch function of the stage: cluster records in, one distilled record or reject each.

    Per batch: `distill_requests`, one `generate` call per candidate (`candidates`, see the
    module doc), then `complete_clusters`. Thread-safe when the generator and the embedder
    are: a streaming executor calls it from many threads at once.
    """

    def distill_batch(clusters: list[dict]) -> list[dict]:
        replies = generate_requests(generator, distill_requests(clusters, members_by_id, cfg))
        return complete_clusters(
            clusters, replies, embedder, cfg, members_by_id, saved, generator.name
        )

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


class DistillStage(RequestStage):
    """The distiller as a per-record stage: cluster records in, one distilled record or
    reject each.

    Built from the distill config, the pool file the members come from, the call cache's
    path (None: no cache), the embedder's name (default: the config's), the file of the
    members' saved embeddings (`io.vectors`, the cluster stage's; absent: embed them) and
    whether any cluster needs the model (`needs_model`; False when every cluster is marked
    incoherent). `open()` loads the generator (when needed) and what `open_for_replies()`
    opens: the embedder and the pool indexed by id. A cluster the backend failed on
    (`generation_error`) is retried on the next run; every other reject is final. A server
    backend takes one cluster per call, `generator.concurrency` at once. As a
    `RequestStage`, an executor may make the distiller's calls itself (`requests`, then
    `complete`).
    """

    description = "distill"

    def __init__(
        self,
        cfg: DistillConfig,
        pool: Path,
        cache_path: Path | None = None,
        embedder: str | None = None,
        member_vectors: Path | None = None,
        needs_model: bool = True,
    ):
        self.cfg = cfg
        self.pool = pool
        self.cache_path = cache_path
        self.embedder = embedder or cfg.embedder
        self.member_vectors = member_vectors
        self.needs_model = needs_model
        self.batch_size, self.concurrency = stage_sizing(cfg.generator)
        self._cache: CallCache | None = None
        self._distill: BatchFn | None = None
        self._generator: Generator | None = None
        self._embed: Embedder | None = None
        self._members: dict[str, dict] = {}
        self._saved: SavedVectors | None = None

    def open_for_replies(self) -> None:
        from lmmixup.backends.embed import load_embedder

        self._members = {record["id"]: record for record in read_records(self.pool)}
        self._saved = self.member_vectors and load_vectors(self.member_vectors, self.embedder)
        # records in flight at once share embedding calls
        self._embed = CoalescingEncoder(load_embedder(self.embedder, self.cfg.embed_device))

    def open(self) -> None:
        from lmmixup.backends import load_generator

        self.open_for_replies()
        if not self.needs_model:  # every cluster is rejected as incoherent, without a call
            return
        self._cache = None if self.cache_path is None else CallCache(self.cache_path)
        self._generator = load_generator(self.cfg.generator, self._cache)
        self._distill = make_distill_fn(
            self._generator, self._embed, self.cfg, self._members, self._saved
        )

    def process(self, batch: list[dict]) -> list[dict]:
        if self._distill is None:  # no model loaded: no cluster asks for one
            return self.complete(batch, [[] for _ in batch])
        return self._distill(batch)

    def llm_backend(self) -> BackendConfig:
        return self.cfg.generator

    def requests(self, batch: list[dict]) -> list[list[Request]]:
        return distill_requests(batch, self._members, self.cfg)

    def complete(self, batch: list[dict], replies: list[list[Generation]]) -> list[dict]:
        model = self.cfg.generator.model
        return complete_clusters(
            batch, replies, self._embed, self.cfg, self._members, self._saved, model
        )

    def retry(self, reject: dict) -> bool:
        return reject.get("reason") == GENERATION_ERROR

    def close(self) -> dict[str, Any]:
        report: dict[str, Any] = {}
        usage = usage_of(self._generator)
        if usage:
            report["usage"] = usage
        if self._cache is not None:
            report["cache"] = self._cache.stats()
            self._cache.close()
        if hasattr(self._generator, "close"):
            self._generator.close()
        self._distill = self._cache = self._generator = self._embed = self._saved = None
        self._members = {}
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
    record in either is not redone. Member embeddings the cluster stage saved beside
    `clusters_path` (`io.vectors`) are used where they fit. Returns counts for the manifest: this run's `written`,
    `rejected` and `already_done`, plus the files' totals (`distilled`, `reject_reasons`).
    """
    numbered_clusters, _ = read_distill_inputs(clusters_path, pool_path)
    # Input records carry their output's id, so the executor's resume (keyed by `id`) and
    # reject line numbers work at cluster granularity.
    clusters = [
        (number, {**cluster, "id": distilled_id(cluster["cluster_id"])})
        for number, cluster in numbered_clusters
    ]
    cache_path = None if cache is None else cache.path
    saved = vectors_beside(clusters_path)  # the cluster stage's, when it is there
    needs_model = any(is_coherent(cluster) for _, cluster in clusters)
    stage = DistillStage(cfg, Path(pool_path), cache_path, embedder_name, saved, needs_model)
    run = current_executor().run(
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
    if "usage" in run.report:
        counts["distiller_usage"] = run.report["usage"]
    counts["distilled"] = len(read_records(out_path))
    counts["reject_reasons"] = reject_reasons(rejects_path)
    counts.update(first_error(rejects_path, GENERATION_ERROR))
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
        note = distill_failures(counts, GENERATION_ERROR)
        stage.partial = (
            note.line()
            if note
            else f"{failed} clusters failed in the distiller; re-run to retry them"
        )


DISTILL = StageSpec(
    "distill",
    sections=("distill",),
    reads={"clusters": "cluster.clusters", "low": "split.low"},
    outputs={"distilled": "distilled.jsonl", "rejects": "rejects.jsonl"},
    run=_run_distill,
)
