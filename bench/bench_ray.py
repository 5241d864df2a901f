"""The Ray executor against the local one: fixed overhead and per-record rate.

The stage is the kNN-Bayes scorer (`KnnStage`: the bundled MiniLM embedder plus a library
fitted here on bundled pairs with length-derived labels): CPU-bound per-record work, the kind
Ray spreads over machines. Each size runs once with the local executor and once on a local
Ray cluster of `--nodes` nodes with one CPU each (started and stopped here; the time to
start it is reported apart), 2 actors of 1 CPU (`actors`). Wall time of the stage call only;
the fit of the rate per record and the overhead is a least-squares line through the sizes.

    PYTHONPATH=src .venv/bin/python bench/bench_ray.py --sizes 200 800
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from common import bundled_pool, machine_note

from lmmixup.backends.embed import load_embedder, record_text
from lmmixup.config import ExecutorConfig, RateConfig
from lmmixup.io.jsonl import write_records
from lmmixup.method.knn_bayes import KnnBayesScorer
from lmmixup.runtime.executor import LocalExecutor
from lmmixup.runtime.executors import using
from lmmixup.runtime.ray_executor import RayExecutor
from lmmixup.stages.rate import score_with_library


def _library(rows: list[dict], folder: Path, cfg: RateConfig) -> Path:
    vectors = load_embedder(cfg.embedder).encode([record_text(r) for r in rows])
    labels = np.array([min(5, len(r["completion"]) // 120) for r in rows], dtype=np.int64)
    KnnBayesScorer.fit(vectors, labels, embedder=cfg.embedder).save(folder)
    return folder


def _timed(executor, pool: Path, library: Path, cfg: RateConfig, out: Path) -> float:
    start = time.perf_counter()
    with using(executor):
        counts = score_with_library(pool, out / "rated.jsonl", out / "rejects.jsonl", library, cfg)
    assert counts["written"] + counts["rejected"] > 0
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 800])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--actors", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray.cluster_utils import Cluster

    cfg = RateConfig(method="knn")
    rows = bundled_pool(sharegpt=max(args.sizes), gsm8k=1)
    print(machine_note(), f"pool: {len(rows)} bundled pairs")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        library = _library(rows[:200], tmp / "library", cfg)
        start = time.perf_counter()
        node = {"num_cpus": 1, "object_store_memory": 200 * 2**20}
        cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
        for _ in range(args.nodes - 1):
            cluster.add_node(**node)
        ray.init(address=cluster.address, log_to_driver=False)
        print(f"cluster of {args.nodes} nodes up and joined in {time.perf_counter() - start:.1f} s")
        ray_executor = RayExecutor(ExecutorConfig(kind="ray", actors=args.actors, num_cpus=1))
        results = []
        try:
            for size in args.sizes:
                pool = tmp / f"pool{size}.jsonl"
                write_records(pool, rows[:size])
                local = _timed(LocalExecutor(), pool, library, cfg, tmp / f"local{size}")
                on_ray = _timed(ray_executor, pool, library, cfg, tmp / f"ray{size}")
                results.append((size, local, on_ray))
                print(f"{size:6d} records: local {local:6.1f} s   ray {on_ray:6.1f} s")
        finally:
            ray.shutdown()
            cluster.shutdown()
    if len(results) >= 2:
        sizes = np.array([r[0] for r in results], dtype=float)
        for name, column in (("local", 1), ("ray", 2)):
            slope, intercept = np.polyfit(sizes, [r[column] for r in results], 1)
            print(f"{name}: {intercept:.1f} s fixed + {1 / slope:.0f} records/s")


if __name__ == "__main__":
    main()
