"""`lmmixup cluster`: low-quality records -> cluster records (SPEC stage 3)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from lmmixup.backends.embed import load_embedder, record_text
from lmmixup.config import ClusterConfig
from lmmixup.io import read_records, write_records


def cluster_records(records: list[dict], vectors: np.ndarray, cfg: ClusterConfig) -> list[dict]:
    """Cluster records by their unit embeddings; one cluster record per cluster."""
    from lmmixup.clustering import cluster_by_group, cluster_embeddings, cohesion

    if not records:
        return []
    sizes = {
        "min_size": cfg.min_size,
        "max_size": cfg.max_size,
        "mean_size": cfg.mean_size,
        "std_size": cfg.std_size,
        "seed": cfg.seed,
    }
    if cfg.per_source:
        labels = cluster_by_group(vectors, [r["source"] for r in records], **sizes)
    else:
        labels = cluster_embeddings(vectors, **sizes)
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
    """Embed and cluster a record file; write cluster records; return counts for the manifest."""
    records = read_records(low)
    vectors = load_embedder(cfg.embedder).encode(
        [record_text(r) for r in records], description="embed low"
    )
    clusters = cluster_records(records, vectors, cfg)
    write_records(output, clusters)
    sizes = [c["size"] for c in clusters]
    return {
        "records": len(records),
        "clusters": len(clusters),
        "size_histogram": {str(s): sizes.count(s) for s in sorted(set(sizes))},
        "mean_cohesion": round(float(np.mean([c["cohesion"] for c in clusters])), 4)
        if clusters
        else None,
    }
