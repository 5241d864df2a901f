"""`lmmixup cluster`: low-quality records -> cluster records (SPEC stage 3).

Before clustering, a record whose embedding is within `dedup_threshold` cosine of a record
kept before it (file order, across all sources) is set aside as a near-duplicate: it goes to the rejects file with
reason `near_duplicate` and the id it duplicates. After clustering, each cluster is marked
`coherent` when its cohesion is at least `min_cohesion`; incoherent clusters are written too
(the distill stage skips them), so every record ends in a cluster or in the rejects file.
The clustered records' embeddings are saved beside the clusters (NAME.vectors.npz) for the
distill stage, which then embeds only what it writes.

`CLUSTER` declares it as a stage of `lmmixup run`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from lmmixup.backends.embed import load_embedder, record_text
from lmmixup.config import ClusterConfig, RunConfig
from lmmixup.errors import LmmixupError
from lmmixup.io.jsonl import write_records
from lmmixup.io.validate import POOL_RECORD, read_checked
from lmmixup.io.vectors import save_vectors, vectors_beside
from lmmixup.runtime.runner import StageDir, rejects_beside
from lmmixup.runtime.spec import StageSpec

NEAR_DUPLICATE = "near_duplicate"
"""Reject reason of a record set aside as a near-duplicate of an earlier kept record."""

_DEDUP_WIDTH = 16


def near_duplicate_of(vectors: np.ndarray, threshold: float) -> list[int | None]:
    """For each unit row, the earlier kept row it is a near-duplicate of, or None if kept.

    Rows are visited in order; a row is a near-duplicate when some row kept before it has a
    cosine of at least `threshold` with it, and then it names the most similar such row (the
    first of equally similar ones). The neighbour lists are exact: a row whose list is all
    above the threshold is searched again with twice the width until it is not, so large
    duplicate groups are handled too.
    """
    from lmmixup.method.knn import CosineIndex

    n = len(vectors)
    if n == 0:
        return []
    index = CosineIndex(vectors)
    close: list[list[tuple[float, int]]] = [[] for _ in range(n)]
    rows, width = np.arange(n), min(_DEDUP_WIDTH, n)
    while len(rows):
        sims, ids = index.search(vectors[rows], width)
        for row, row_sims, row_ids in zip(rows.tolist(), sims.tolist(), ids.tolist(), strict=True):
            close[row] = [(s, j) for s, j in zip(row_sims, row_ids, strict=True) if s >= threshold]
        if width == n:
            break
        rows = rows[sims[:, -1] >= threshold]
        width = min(2 * width, n)
    kept = np.zeros(n, dtype=bool)
    out: list[int | None] = []
    for row in range(n):
        earlier = [(-s, j) for s, j in close[row] if j < row and kept[j]]
        out.append(min(earlier)[1] if earlier else None)  # most similar, then first
        kept[row] = not earlier
    return out


def drop_near_duplicates(
    records: list[dict], vectors: np.ndarray, threshold: float | None
) -> tuple[list[dict], np.ndarray, list[dict]]:
    """Records and vectors without the near-duplicates, and a reject record for each of those
    (the record itself, `reason`, `duplicate_of` and the cosine `similarity`)."""
    if threshold is None or not records:
        return records, vectors, []
    of = near_duplicate_of(vectors, threshold)
    keep = [row for row, kept in enumerate(of) if kept is None]
    rejects = [
        {
            **records[row],
            "reason": NEAR_DUPLICATE,
            "duplicate_of": records[kept]["id"],
            "similarity": round(float(vectors[row] @ vectors[kept]), 4),
        }
        for row, kept in enumerate(of)
        if kept is not None
    ]
    return [records[row] for row in keep], vectors[keep], rejects


def cluster_records(records: list[dict], vectors: np.ndarray, cfg: ClusterConfig) -> list[dict]:
    """Cluster records by their unit embeddings; one cluster record per cluster.

    A (per-source) group with fewer records than `min_size` becomes one smaller cluster, so
    every record is in exactly one cluster. Sizes that cannot be met are an error. A cluster
    is `coherent` when its cohesion is at least `cfg.min_cohesion`.
    """
    from lmmixup.method.clustering import cluster_by_group, cluster_embeddings, cohesion

    if not records:
        return []
    sizes = {
        "min_size": cfg.min_size,
        "max_size": cfg.max_size,
        "mean_size": cfg.mean_size,
        "std_size": cfg.std_size,
        "seed": cfg.seed,
        "greedy_seeding": cfg.greedy_seeding,
    }
    try:
        if cfg.per_source:
            labels = cluster_by_group(vectors, [r["source"] for r in records], **sizes)
        else:
            labels = cluster_embeddings(vectors, **sizes)
    except ValueError as err:  # sizes no number of clusters can sum to
        raise LmmixupError(f"cluster: {err}") from None
    scores = cohesion(vectors, labels)
    members: dict[int, list[dict]] = {}
    for record, label in zip(records, labels.tolist(), strict=True):
        members.setdefault(label, []).append(record)
    clusters = []
    for label in sorted(members):
        group = members[label]
        task_types = Counter(r.get("task_type") for r in group if r.get("task_type"))
        score = round(float(scores[label]), 4)  # coherent agrees with the cohesion shown
        clusters.append(
            {
                "cluster_id": f"c{label:06d}",
                "source": Counter(r["source"] for r in group).most_common(1)[0][0],
                "member_ids": [r["id"] for r in group],
                "size": len(group),
                "cohesion": score,
                "coherent": score >= cfg.min_cohesion,
                **({"task_type": task_types.most_common(1)[0][0]} if task_types else {}),
            }
        )
    return clusters


def cluster_file(low: Path, output: Path, cfg: ClusterConfig, rejects: Path | None = None) -> dict:
    """Embed and cluster a record file; write cluster records; return counts for the manifest.

    The clustered records' embeddings are saved beside the output (`io.vectors`), for the
    distill stage's drift check.

    Near-duplicates (`cfg.dedup_threshold`) go to `rejects` (default: OUTPUT.rejects.jsonl
    beside the output), every other record is in exactly one cluster. `near_duplicates`
    counts the former; `below_min_size` the clusters smaller than `min_size` (groups with too
    few records) and the records in them; `incoherent_clusters` / `incoherent_members` the
    clusters below `min_cohesion` and their records.
    """
    records = read_checked(low, POOL_RECORD, allow_empty=True)
    vectors = load_embedder(cfg.embedder, cfg.embed_device).encode(
        [record_text(r) for r in records], description="embed low"
    )
    kept, kept_vectors, duplicates = drop_near_duplicates(records, vectors, cfg.dedup_threshold)
    clusters = cluster_records(kept, kept_vectors, cfg)
    write_records(rejects_beside(output) if rejects is None else rejects, duplicates)
    write_records(output, clusters)
    save_vectors(
        vectors_beside(output),
        [r["id"] for r in kept],
        [record_text(r) for r in kept],
        kept_vectors,
        cfg.embedder,
    )
    sizes = [c["size"] for c in clusters]
    small = [size for size in sizes if size < cfg.min_size]
    incoherent = [c["size"] for c in clusters if not c["coherent"]]
    return {
        "records": len(records),
        "near_duplicates": len(duplicates),
        "clusters": len(clusters),
        "incoherent_clusters": len(incoherent),
        "incoherent_members": sum(incoherent),
        "below_min_size": {"clusters": len(small), "records": sum(small)},
        "size_histogram": {str(s): sizes.count(s) for s in sorted(set(sizes))},
        "mean_cohesion": round(float(np.mean([c["cohesion"] for c in clusters])), 4)
        if clusters
        else None,
        "reject_reasons": {NEAR_DUPLICATE: len(duplicates)} if duplicates else {},
    }


def _run_cluster(stage: StageDir, cfg: RunConfig, inputs: dict[str, Path]) -> None:
    stage.counts.update(
        cluster_file(
            inputs["low"], stage.file("clusters.jsonl"), cfg.cluster, stage.file("rejects.jsonl")
        )
    )


CLUSTER = StageSpec(
    "cluster",
    sections=("cluster",),
    reads={"low": "split.low"},
    outputs={"clusters": "clusters.jsonl", "rejects": "rejects.jsonl"},
    run=_run_cluster,
)
