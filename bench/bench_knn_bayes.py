"""Time KnnBayesScorer.fit and scoring on clustered synthetic embeddings.

    .venv/bin/python bench/bench_knn_bayes.py --search exact ivf

Library labels follow the proportions of SPEC stage 1's reference distribution; each cluster
has a dominant score so neighbours carry signal. With both search kinds, IVF is also compared
with the exact result.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import faiss
import numpy as np

from lmmixup.method.knn_bayes import KnnBayesScorer, banded_reward

REFERENCE_COUNTS = np.array([18626, 44401, 86132, 87975, 59969, 3829])
CLUSTER_PURITY = 0.6
NOISE_PER_DIM = 0.05  # cosine to the cluster centre about 0.7 at d=384


def clustered_unit_vectors(rng, centres, count):
    """Unit vectors scattered around randomly chosen centres; returns (vectors, cluster ids)."""
    which = rng.integers(0, len(centres), count)
    noise = rng.standard_normal((count, centres.shape[1]), dtype=np.float32)
    vectors = centres[which] + NOISE_PER_DIM * noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, which


def library_labels(rng, cluster_of, n_clusters):
    """Each item takes its cluster's score with probability CLUSTER_PURITY, else a fresh draw."""
    proportions = REFERENCE_COUNTS / REFERENCE_COUNTS.sum()
    cluster_score = rng.choice(6, size=n_clusters, p=proportions)
    fresh = rng.choice(6, size=len(cluster_of), p=proportions)
    keep = rng.random(len(cluster_of)) < CLUSTER_PURITY
    return np.where(keep, cluster_score[cluster_of], fresh)


def timed(label, fn):
    """Run fn; print wall seconds and process CPU seconds (CPU / cores ~ wall when uncontended)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{label}: {wall:.2f} s wall, {cpu:.2f} s CPU")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=2_000)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--search", nargs="+", choices=["exact", "ivf"], default=["exact"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((args.clusters, args.dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    library, cluster_of = clustered_unit_vectors(rng, centres, args.library)
    labels = library_labels(rng, cluster_of, args.clusters)
    queries, _ = clustered_unit_vectors(rng, centres, args.queries)
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"faiss {faiss.__version__} with {faiss.omp_get_max_threads()} threads, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(f"library {args.library} x {args.dim}, queries {args.queries}, k {args.k}")
    print("library label counts:", np.bincount(labels, minlength=6).tolist())

    results = {}
    for kind in args.search:
        scorer = timed(
            f"[{kind}] fit",
            lambda kind=kind: KnnBayesScorer.fit(library, labels, search=kind, nprobe=args.nprobe),
        )
        results[kind] = timed(
            f"[{kind}] score {args.queries} queries", lambda s=scorer: s.score(queries, k=args.k)
        )
    if {"exact", "ivf"} <= results.keys():
        exact, ivf = results["exact"], results["ivf"]
        same_reward = banded_reward(exact.expected, exact.mode) == banded_reward(
            ivf.expected, ivf.mode
        )
        print(f"ivf vs exact: mode agreement {np.mean(exact.mode == ivf.mode):.4f}")
        print(f"ivf vs exact: mean |dE| {np.mean(np.abs(exact.expected - ivf.expected)):.4f}")
        print(f"ivf vs exact: banded reward agreement {np.mean(same_reward):.4f}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
