"""The paper's scale on this machine: a synthetic pool through rate, embed, cluster, distill and
re-rate and select, with each stage's wall time and peak memory, and an extrapolation to 300K rows and to
real server speeds.

    PYTHONPATH=src nice -n 10 .venv/bin/python bench/bench_scale.py --rows 30000
    PYTHONPATH=src .venv/bin/python bench/bench_scale.py --rows 10000,30000 --target 300000

Rate (generate mode, --rate-concurrency 256) and distill (--distill-concurrency 128) talk to
bench_server_client's latency-simulating server, here with short replies (--latency-ms, mean;
uniform from 1/4 to 7/4 of it), so their times are the client's own cost; the extrapolation
table adds what a real server's latency costs with every slot busy (a lower bound). Each stage
is a child process (the lmmixup command, or for embed/cluster the cluster stage's own
functions split in two), so its peak RSS is its own (`os.wait4`). The split takes the top
half as high (the server rates every row the same). Stage times scale to --target along
the line through two --rows scales (fixed start-up plus a cost per row), or in proportion
from one; k-means grows faster than linearly, so its extrapolation is a lower bound.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_server_client as server_module
from bench_server_client import LatencyServer, synthetic_pool
from common import machine_note

from lmmixup.io.jsonl import write_records

REAL_LATENCIES_S = (0.5, 2.0, 5.0)


def child(args: list[str], env: dict) -> dict:
    """Run a child process; its wall seconds and peak RSS (MiB)."""
    start = time.monotonic()
    process = subprocess.Popen(args, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{args[:4]} failed with exit code {process.returncode}")
    return {
        "wall_s": round(time.monotonic() - start, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
    }


def lmmixup(*args: str) -> list[str]:
    return [sys.executable, "-m", "lmmixup.cli", "-q", *args]


def embed_child(low: Path, vectors: Path) -> None:
    """Child: the cluster stage's embedding of the low records, saved as .npy."""
    import numpy as np

    from lmmixup.backends.embed import load_embedder, record_text
    from lmmixup.config import ClusterConfig
    from lmmixup.io.jsonl import read_records

    cfg = ClusterConfig()
    records = read_records(low)
    embedder = load_embedder(cfg.embedder, cfg.embed_device)
    np.save(vectors, embedder.encode([record_text(r) for r in records]))


def cluster_child(low: Path, vectors: Path, output: Path) -> None:
    """Child: the cluster stage's clustering of the embedded low records (no cohesion floor)."""
    import numpy as np

    from lmmixup.config import ClusterConfig
    from lmmixup.io.jsonl import read_records, write_records
    from lmmixup.stages.cluster import cluster_records

    cfg = ClusterConfig(min_cohesion=0)
    write_records(output, cluster_records(read_records(low), np.load(vectors), cfg))


def run_scale(rows: int, args, server: LatencyServer, work: Path, env: dict) -> dict:
    """Every stage on a pool of `rows`; per stage: wall, CPU, peak RSS, and server stats."""
    stages: dict[str, dict] = {}
    start = time.monotonic()
    pool = work / "pool.jsonl"
    write_records(pool, synthetic_pool(rows))
    stages["pool"] = {"wall_s": round(time.monotonic() - start, 1)}
    url = server.base_url
    server.reset()
    stages["rate"] = child(
        lmmixup(
            "rate", str(pool), "-o", str(work / "rated.jsonl"), "--backend", "openai",
            "--base-url", url, "--model", "judge", "--mode", "generate",
            "--concurrency", str(args.rate_concurrency),
        ),
        env,
    ) | server.stats(args.rate_concurrency)  # fmt: skip
    high, low = work / "high.jsonl", work / "low.jsonl"
    stages["split"] = child(
        lmmixup("split", str(work / "rated.jsonl"), "--high", str(high), "--low", str(low),
                "--high-fraction", "0.5"),
        env,
    )  # fmt: skip
    vectors, clusters = work / "low.npy", work / "clusters.jsonl"
    me = [sys.executable, __file__]
    stages["embed"] = child([*me, "--child", "embed", str(low), str(vectors)], env)
    stages["cluster"] = child(
        [*me, "--child", "cluster", str(low), str(vectors), str(clusters)], env
    )
    distill_cfg = work / "distill.yaml"
    distill_cfg.write_text("generator:\n  batch_size: 16\n")
    server.reset()
    stages["distill"] = child(
        lmmixup(
            "distill", str(clusters), "--pool", str(low), "-o", str(work / "distilled.jsonl"),
            "--backend", "openai", "--base-url", url, "--model", "distiller",
            "--concurrency", str(args.distill_concurrency), "-c", str(distill_cfg),
        ),
        env,
    ) | server.stats(args.distill_concurrency)  # fmt: skip
    server.reset()
    rerated = work / "rerated.jsonl"
    stages["rerate"] = child(
        lmmixup(
            "rate", str(work / "distilled.jsonl"), "-o", str(rerated), "--backend", "openai",
            "--base-url", url, "--model", "judge", "--mode", "generate",
            "--concurrency", str(args.rate_concurrency),
        ),
        env,
    ) | server.stats(args.rate_concurrency)  # fmt: skip
    stages["select"] = child(
        lmmixup("select", "--original", str(high), "--mixup", str(rerated),
                "-o", str(work / "train.jsonl"), "--budget", str(max(1, rows // 30)),
                "--mixup-ratio", "0.5", "--allow-short"),
        env,
    )  # fmt: skip
    counts = {"clusters": sum(1 for _ in clusters.open()), "low": sum(1 for _ in low.open())}
    return {"rows": rows, "counts": counts, "stages": stages}


def fit(results: list[dict], name: str) -> tuple[float, float]:
    """(fixed seconds, seconds per row) of a stage: a line through the smallest and largest
    scale (start-up costs, model loads, are the fixed part); through 0 with one scale."""
    first, last = results[0], results[-1]
    t1, t2 = first["stages"][name]["wall_s"], last["stages"][name]["wall_s"]
    if len(results) > 1 and t2 > t1:
        per_row = (t2 - t1) / (last["rows"] - first["rows"])
        return t1 - per_row * first["rows"], per_row
    return 0.0, t2 / last["rows"]


def extrapolate(results: list[dict], target: int, args) -> dict:
    """Stage times at `target` rows (linear in rows, see `fit`), and rate, distill and
    re-rate behind a real server whose replies take REAL_LATENCIES_S, all slots busy."""
    last = results[-1]
    factor = target / last["rows"]
    scaled = {}
    for name in last["stages"]:
        fixed, per_row = fit(results, name)
        scaled[name] = round(fixed + per_row * target)
    servers = {}
    for name, concurrency in (
        ("rate", args.rate_concurrency),
        ("distill", args.distill_concurrency),
        ("rerate", args.rate_concurrency),
    ):
        calls = last["stages"][name]["requests"] * factor
        servers[name] = {
            f"{latency:g}s": round(max(scaled[name], calls * latency / concurrency))
            for latency in REAL_LATENCIES_S
        }
    return {"target_rows": target, "stage_s": scaled, "with_server_s": servers}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        {"embed": embed_child, "cluster": cluster_child}[sys.argv[2]](*map(Path, sys.argv[3:]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", default="30000", help="Pool sizes, comma-separated.")
    parser.add_argument("--target", type=int, default=300_000, help="Rows to extrapolate to.")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="Mean simulated reply time.")
    parser.add_argument("--rate-concurrency", type=int, default=256)
    parser.add_argument("--distill-concurrency", type=int, default=128)
    args = parser.parse_args()
    mean = args.latency_ms / 1000
    server_module.DELAY_S = (mean / 4, mean * 7 / 4)
    print(f"{machine_note()}; simulated latency {server_module.DELAY_S}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp, LatencyServer() as server:
        path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
        for rows in sorted(int(r) for r in args.rows.split(",")):
            work = Path(tmp) / str(rows)
            work.mkdir()
            # a call cache per scale: every call of every scale reaches the server
            env = {**os.environ, "LMMIXUP_CACHE": str(work / "cache"), "OPENAI_API_KEY": "x"}
            env["PYTHONPATH"] = path
            results.append(run_scale(rows, args, server, work, env))
            print(json.dumps(results[-1]), flush=True)
    print(json.dumps({"extrapolated": extrapolate(results, args.target, args)}), flush=True)


if __name__ == "__main__":
    main()
