"""Cluster cohesion on real embeddings: seeding before/after, the cohesion floor, near-duplicates.

Run by hand from the repository root (embeds a few thousand bundled records, ~1-2 min):

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_cohesion.py

Vectors: all-MiniLM-L6-v2 (the bundled default embedder) of a seeded sample of the bundled
ShareGPT and GSM8K pairs (`common.bundled_pool`), and of the demo's low pool when a demo run
directory is given (`--demo-low runs/demo/split/low.jsonl`).

1. Seeding: mean cohesion of `cluster_embeddings` with plain k-means++ seeds (the default,
   the same seeds as before greedy seeding existed), with greedy k-means++ seeds
   (`greedy_seeding=True`), and with scikit-learn's greedy `kmeans_plusplus` seeds as a
   reference (the same faiss Lloyd iterations and capacity-constrained fill after each).
2. Cohesion of related vs unrelated groups: groups of 2-4 rule-degraded variants of one pair
   (`lmmixup.mixture.degrade.degrade_pair`: the redundant samples the method wants to merge),
   random groups of distinct records of one source (unrelated: "pizza costs with Theo's
   pen"), and the clusters the stage makes of the pool (demo sizes 2-4), each by quantiles;
   then each record's nearest neighbour of the same source as a pair.
3. Near-duplicates: how many records the cluster stage's dedup would set aside at each
   threshold, on the pool and among the variant groups.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from common import bundled_pool, machine_note  # noqa: E402

from lmmixup.method import clustering  # noqa: E402
from lmmixup.method.clustering import cluster_embeddings, cohesion  # noqa: E402

DEMO_SIZES = {"min_size": 2, "max_size": 4, "mean_size": 3.0, "std_size": 1.0}
SIZE_SETS = {
    "[2, 25] mean 10": {"min_size": 2, "max_size": 25, "mean_size": 10.0, "std_size": 3.0},
    "[2, 5] mean 3": {"min_size": 2, "max_size": 5, "mean_size": 3.0, "std_size": 1.0},
    "[2, 4] mean 3 (demo)": DEMO_SIZES,
}
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
SEED_CENTRES = clustering._seed_centres  # the unpatched seeding


def greedy_seeding(
    X: np.ndarray, k: int, rng: np.random.Generator, *, greedy: bool = False
) -> np.ndarray:
    """Our greedy k-means++ seeds (whatever `greedy` the caller passes)."""
    return SEED_CENTRES(X, k, rng, greedy=True)


def sklearn_seeding(
    X: np.ndarray, k: int, rng: np.random.Generator, *, greedy: bool = False
) -> np.ndarray:
    """scikit-learn's greedy k-means++ (2 + ln k trials per seed) as row indices."""
    from sklearn.cluster import kmeans_plusplus

    _, rows = kmeans_plusplus(X, k, random_state=int(rng.integers(2**31)))
    return rows


def mean_cohesion(X: np.ndarray, seeding, seeds: range, **sizes) -> tuple[float, float]:
    """Mean cohesion over `seeds` with `seeding` as `_seed_centres`, and seconds per run."""
    original = clustering._seed_centres
    clustering._seed_centres = seeding
    try:
        scores, start = [], time.perf_counter()
        for seed in seeds:
            labels = cluster_embeddings(X, seed=seed, **sizes)
            scores.append(float(np.mean(cohesion(X, labels))))
        return float(np.mean(scores)), (time.perf_counter() - start) / len(seeds)
    finally:
        clustering._seed_centres = original


def variant_groups(records: list[dict], count: int, seed: int) -> list[list[dict]]:
    """`count` groups of 2-4 members: one pair and rule-degraded variants of it."""
    from lmmixup.mixture.degrade import degrade_pair

    rng = random.Random(seed)
    groups = []
    for record in rng.sample(records, count):
        size = rng.randint(2, 4)
        group = [record]
        for _ in range(20):
            if len(group) == size:
                break
            variant = degrade_pair(record["prompt"], record["completion"], rng)
            if variant is not None:
                group.append({"prompt": variant.prompt, "completion": variant.completion})
        if len(group) >= 2:
            groups.append(group)
    return groups


def group_cohesion(vectors: list[np.ndarray]) -> np.ndarray:
    """Cohesion of each group of unit vectors."""
    return np.array([np.linalg.norm(v.sum(axis=0)) / len(v) for v in vectors])


def quantile_row(name: str, values: np.ndarray) -> str:
    qs = " | ".join(f"{q:.3f}" for q in np.quantile(values, QUANTILES))
    return f"| {name} | {len(values)} | {qs} | {values.min():.3f} | {values.max():.3f} |"


def floor_row(name: str, values: np.ndarray, floors: list[float]) -> str:
    kept = " | ".join(f"{np.mean(values >= f):.0%}" for f in floors)
    return f"| {name} | {len(values)} | {kept} |"


def near_duplicates(X: np.ndarray, threshold: float) -> int:
    """How many rows the stage's dedup sets aside at `threshold` (file order)."""
    from lmmixup.stages.cluster import near_duplicate_of

    return sum(1 for j in near_duplicate_of(X, threshold) if j is not None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sharegpt", type=int, default=300)
    parser.add_argument("--gsm8k", type=int, default=300)
    parser.add_argument("--demo-low", type=Path, default=ROOT / "runs/demo/split/low.jsonl")
    parser.add_argument("--cache", type=Path, help="folder to keep the pool and its vectors in")
    parser.add_argument("--seeds", type=int, default=3, help="clustering seeds per cell")
    parser.add_argument("--groups", type=int, default=150, help="variant groups to embed")
    parser.add_argument("--synthetic", type=int, default=20000, help="mixture vectors (0: none)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress shows when redirected to a file

    from lmmixup.backends.embed import load_embedder, record_text
    from lmmixup.config import DEFAULT_EMBEDDER

    embed = load_embedder(DEFAULT_EMBEDDER)
    print(f"Machine: {machine_note()}\n")
    pool_file = args.cache / "pool.jsonl" if args.cache else None
    if pool_file and pool_file.exists():
        records = [json.loads(line) for line in pool_file.open()]
        X = np.load(args.cache / "pool.npy")
    else:
        records = bundled_pool(args.sharegpt, args.gsm8k, seed=0)
        X = embed.encode([record_text(r) for r in records], description="embed pool")
        if args.cache:
            args.cache.mkdir(parents=True, exist_ok=True)
            pool_file.write_text("".join(json.dumps(r) + "\n" for r in records))
            np.save(args.cache / "pool.npy", X)
    sets = {f"pool ({len(records)}: ShareGPT + GSM8K)": X}
    if args.synthetic:
        from bench_clustering import gaussian_mixture

        sets[f"synthetic mixture ({args.synthetic}, d 384)"] = gaussian_mixture(args.synthetic, 384)
    demo = []
    if args.demo_low.exists():
        demo = [json.loads(line) for line in args.demo_low.open()]
        sets[f"demo low ({len(demo)})"] = embed.encode([record_text(r) for r in demo])

    # 1. seeding -------------------------------------------------------------------------
    seeds = range(args.seeds)
    print(f"### Seeding: mean cohesion (mean over seeds 0..{args.seeds - 1})\n")
    print(
        "| vectors | sizes | plain (default) | greedy | sklearn greedy seeds | greedy / plain "
        "| greedy / sklearn | s per run plain / greedy |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, V in sets.items():
        for label, sizes in SIZE_SETS.items():
            runs = range(1) if name.startswith("synthetic") else seeds
            before, t_before = mean_cohesion(V, clustering._seed_centres, runs, **sizes)
            after, t_after = mean_cohesion(V, greedy_seeding, runs, **sizes)
            ref, _ = mean_cohesion(V, sklearn_seeding, runs, **sizes)
            print(
                f"| {name} | {label} | {before:.4f} | {after:.4f} | {ref:.4f} | "
                f"{after / before:.4f} | {after / ref:.4f} | {t_before:.2f} / {t_after:.2f} |"
            )

    # 2. cohesion of related vs unrelated groups -------------------------------------------
    groups = variant_groups(records, args.groups, seed=0)
    texts = [record_text(m) for g in groups for m in g]
    flat = embed.encode(texts, description="embed variants")
    bounds = np.cumsum([0] + [len(g) for g in groups])
    related = [flat[bounds[i] : bounds[i + 1]] for i in range(len(groups))]
    rng = np.random.default_rng(0)
    unrelated: dict[str, list[np.ndarray]] = {}
    for source in ("gsm8k", "sharegpt"):
        rows = np.flatnonzero([r["source"] == source for r in records])
        unrelated[source] = [
            X[rng.choice(rows, size=int(rng.integers(2, 5)), replace=False)] for _ in range(600)
        ]
    labels = cluster_embeddings(X, seed=0, **DEMO_SIZES)
    stage = cohesion(X, labels)
    by_size: dict[str, np.ndarray] = {}
    for size in (2, 3, 4):
        by_size[f"variants, size {size}"] = group_cohesion([g for g in related if len(g) == size])
        by_size[f"random GSM8K, size {size}"] = group_cohesion(
            [g for g in unrelated["gsm8k"] if len(g) == size]
        )
        by_size[f"stage clusters of the pool, size {size}"] = stage[np.bincount(labels) == size]
    rows = {
        "variant groups (2-4 degraded copies of one pair)": group_cohesion(related),
        "random GSM8K groups of 2-4": group_cohesion(unrelated["gsm8k"]),
        "random ShareGPT groups of 2-4": group_cohesion(unrelated["sharegpt"]),
        "stage clusters of the pool (sizes 2-4)": stage,
    }
    if demo:
        V = sets[f"demo low ({len(demo)})"]
        rows["stage clusters of the demo low pool (sizes 2-4)"] = cohesion(
            V, cluster_embeddings(V, seed=0, **DEMO_SIZES)
        )
    print("\n### Cohesion of related and unrelated groups\n")
    header = " | ".join(f"q{int(q * 100)}" for q in QUANTILES)
    print(f"| groups | n | {header} | min | max |")
    print("|---|---:|" + "---:|" * (len(QUANTILES) + 2))
    for name, values in {**rows, **by_size}.items():
        print(quantile_row(name, values))
    floors = [0.85, 0.88, 0.9, 0.92, 0.93, 0.94, 0.95, 0.96]
    print("\nShare of groups at or above each floor:\n")
    print("| groups | n | " + " | ".join(f">= {f}" for f in floors) + " |")
    print("|---|---:|" + "---:|" * len(floors))
    for name, values in {**rows, **by_size}.items():
        print(floor_row(name, values, floors))

    print("\nNearest-neighbour pairs (what the stage pairs up in a bigger pool): cohesion")
    print("sqrt((1 + cos) / 2) of each record with its most similar record of the same source\n")
    print("| source | records | q50 | q90 | q99 | max | >= 0.92 | >= 0.95 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for source in ("gsm8k", "sharegpt"):
        rows = np.flatnonzero([r["source"] == source for r in records])
        S = X[rows] @ X[rows].T
        np.fill_diagonal(S, -1.0)
        pair = np.sqrt((1 + np.clip(S.max(axis=1), -1, 1)) / 2)
        q = " | ".join(f"{v:.3f}" for v in np.quantile(pair, (0.5, 0.9, 0.99, 1.0)))
        print(
            f"| {source} | {len(rows)} | {q} | {np.mean(pair >= 0.92):.0%} "
            f"| {np.mean(pair >= 0.95):.0%} |"
        )

    # 3. near-duplicates -------------------------------------------------------------------
    print("\n### Near-duplicates (first kept, later ones within the threshold set aside)\n")
    print("| threshold | pool records set aside | variant-group members set aside |")
    print("|---:|---:|---:|")
    for threshold in (0.85, 0.9, 0.92, 0.95, 0.98):
        in_groups = sum(near_duplicates(g, threshold) for g in related)
        print(
            f"| {threshold} | {near_duplicates(X, threshold)} of {len(X)} | "
            f"{in_groups} of {len(flat)} |"
        )
    dup = clustering_examples(records, X, 0.92)
    print("\nPool pairs at cosine >= 0.92 (up to 8):\n")
    for line in dup:
        print(f"- {line}")


def clustering_examples(records: list[dict], X: np.ndarray, threshold: float) -> list[str]:
    """A few near-duplicate pairs of the pool, as one line each."""
    from lmmixup.stages.cluster import near_duplicate_of

    found = []
    for row, kept in enumerate(near_duplicate_of(X, threshold)):
        if kept is not None and len(found) < 8:
            sim = float(X[row] @ X[kept])
            a, b = records[kept]["prompt"][:70], records[row]["prompt"][:70]
            found.append(f"{sim:.3f} ({records[row]['source']}): {a!r} / {b!r}")
    return found


if __name__ == "__main__":
    main()
