"""`lmmixup cluster`: low-quality records -> cluster records (SPEC stage 3).

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
from lmmixup.runtime.runner import StageDir
from lmmixup.runtime.spec import StageSpec


def cluster_records(records: list[dict], vectors: np.ndarray, cfg: ClusterConfig) -> list[dict]:
    """Cluster records by their unit embeddings; one cluster record per cluster.

    A (per-source) group with fewer records than `min_size` becomes one smaller cluster, so
    every record is in exactly one cluster. Sizes that cannot be met are an error.
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
        clusters.append(
            {
                "cluster_id": f"c{label:06d}",
                "source": Counter(r["source"] for r in group).most_common(1)[0][0],
                "member_ids": [r["id"] for r in group],
                "size": len(group),
                "cohesion": round(float(scores[label]), 4),
                **({"task_type": task_types.most_common(1)[0][0]} if task_types else {}),
            }
        )
    return clusters


def cluster_file(low: Path, output: Path, cfg: ClusterConfig) -> dict:
    """Embed and cluster a record file; write cluster records; return counts for the manifest.

    Every record is in exactly one cluster; `below_min_size` counts the clusters smaller than
    `min_size` (groups with too few records) and the records in them.
    """
    records = read_checked(low, POOL_RECORD, allow_empty=True)
    vectors = load_embedder(cfg.embedder).encode(
        [record_text(r) for r in records], description="embed low"
    )
    clusters = cluster_records(records, vectors, cfg)
    write_records(output, clusters)
    sizes = [c["size"] for c in clusters]
    small = [size for size in sizes if size < cfg.min_size]
    return {
        "records": len(records),
        "clusters": len(clusters),
        "below_min_size": {"clusters": len(small), "records": sum(small)},
        "size_histogram": {str(s): sizes.count(s) for s in sorted(set(sizes))},
        "mean_cohesion": round(float(np.mean([c["cohesion"] for c in clusters])), 4)
        if clusters
        else None,
    }


def _run_cluster(stage: StageDir, cfg: RunConfig, inputs: dict[str, Path]) -> None:
    stage.counts.update(cluster_file(inputs["low"], stage.file("clusters.jsonl"), cfg.cluster))


CLUSTER = StageSpec(
    "cluster",
    sections=("cluster",),
    reads={"low": "split.low"},
    outputs={"clusters": "clusters.jsonl"},
    run=_run_cluster,
)
