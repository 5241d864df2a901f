"""How busy `lmmixup rate` and `lmmixup distill` keep a server that has spare capacity.

A latency-simulating OpenAI-compatible server (asyncio, HTTP/1.1 keep-alive) answers every
chat request after a random 0.5-3.5 s (mean 2 s), never queueing: it has as many slots as the
client sends. The judge gets a valid rating JSON, the distiller a `<think>`/`<answer>` pair
merging the cluster's members. The server records how many requests it holds over time; the
benchmark reports the time-weighted mean of that count from the first request to the last
reply, as a share of `--concurrency` (100% = every slot busy the whole time).

    PYTHONPATH=src .venv/bin/python bench/bench_server_client.py            # issue 16's scale
    PYTHONPATH=src .venv/bin/python bench/bench_server_client.py --scale 0.1 --only rate

Scenarios: `rate` of 3,000 rows at --concurrency 256 (generate mode) and `distill` of 1,500
clusters of 2 at --concurrency 128 (rows 2i and 2i+1 make cluster i; the members' embeddings
are saved beside the clusters as `lmmixup cluster` saves them, where this version does).
The commands run as subprocesses with a fresh call cache, so every call reaches the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import WORDS, machine_note

from lmmixup.io.jsonl import write_records

RATING = '{"rarity": 4, "complexity": 6, "informativeness": 7, "overall": 8}'
DELAY_S = (0.5, 3.5)


class LatencyServer:
    """An OpenAI-compatible chat server whose replies take DELAY_S; counts requests held."""

    def __init__(self, seed: int = 0) -> None:
        self._random = random.Random(seed)
        self.events: list[tuple[float, int]] = []  # (time, +1 arrival / -1 reply sent)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.port = 0

    def __enter__(self) -> LatencyServer:
        self._thread.start()
        self._ready.wait()
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def reset(self) -> None:
        self.events = []

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, "127.0.0.1", 0, backlog=1024)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = dict(
                    line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line
                )
                length = int({k.lower(): v for k, v in headers.items()}.get("content-length", 0))
                body = json.loads(await reader.readexactly(length) or b"{}")
                self.events.append((time.monotonic(), 1))
                await asyncio.sleep(self._random.uniform(*DELAY_S))
                data = json.dumps(_completion(body)).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: keep-alive\r\n\r\n" % len(data) + data
                )
                self.events.append((time.monotonic(), -1))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def stats(self, concurrency: int) -> dict:
        """Requests, the peak and time-weighted mean held, from the first request to the last reply."""
        events = sorted(self.events)
        if not events:
            return {"requests": 0}
        held = peak = 0
        area = 0.0
        for (t, step), (t_next, _) in zip(events, [*events[1:], events[-1]], strict=True):
            held += step
            peak = max(peak, held)
            area += held * (t_next - t)
        span = events[-1][0] - events[0][0]
        mean = area / span if span else 0.0
        return {
            "requests": sum(step > 0 for _, step in events),
            "serving_s": round(span, 1),
            "peak_in_flight": peak,
            "mean_in_flight": round(mean, 1),
            "busy": round(mean / concurrency, 3),
        }


def _completion(body: dict) -> dict:
    """A chat.completion: a rating for the judge, a merged pair for the distiller."""
    content = body["messages"][-1]["content"] if body.get("messages") else ""
    if content.startswith("Merge these"):
        blocks = [part.split("\nA: ", 1) for part in content.split("Q: ")[1:]]
        question = " ".join(q.strip() for q, _ in blocks)
        answer = " ".join(a.split("\n\n", 1)[0].strip() for _, a in blocks)
        text = f"<think>\nmerge them\n</think>\n<answer>\nQ: {question}\nA: {answer}\n</answer>"
    else:
        text = RATING
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", "bench"),
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 100, "completion_tokens": 30, "total_tokens": 130},
    }


def synthetic_pool(count: int, seed: int = 0) -> list[dict]:
    """Distinct short question/answer rows (two per topic, so clusters of 2 pair them)."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        topic = " ".join(rng.sample(WORDS, 3))
        rows.append(
            {
                "id": f"r{i}",
                "prompt": f"Question {i}: what links {topic} in case {i // 2}?",
                "completion": f"The {topic} are linked by case {i // 2}; detail {i}.",
                "source": "bench",
                "task_type": "qa",
            }
        )
    return rows


def _lmmixup(*args: str, env: dict) -> dict:
    """Run an lmmixup command; its wall time and CPU time (user + system) in seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "lmmixup.cli", "-q", *args], env=env, check=True)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"wall_s": round(wall, 1), "client_cpu_s": round(cpu, 1)}


def _has_flag(command: str, flag: str, env: dict) -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "lmmixup.cli", command, "--help"],
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        check=True,
    )
    return flag in out.stdout


def bench_rate(server: LatencyServer, work: Path, rows: int, concurrency: int, env: dict) -> dict:
    pool = work / "pool.jsonl"
    write_records(pool, synthetic_pool(rows))
    server.reset()
    times = _lmmixup(
        "rate", str(pool), "-o", str(work / "rated.jsonl"), "--backend", "openai",
        "--base-url", server.base_url, "--model", "judge", "--mode", "generate",
        "--concurrency", str(concurrency), env=env,
    )  # fmt: skip
    return {"command": "rate", "rows": rows, "concurrency": concurrency, **times}


def write_clusters(work: Path, clusters: int) -> tuple[Path, Path]:
    """The low pool and clusters of 2 (rows 2i and 2i+1), as `lmmixup cluster` leaves them:
    with the members' embeddings saved beside the clusters where this version saves them."""
    low, made = work / "low.jsonl", work / "clusters.jsonl"
    rows = synthetic_pool(2 * clusters)
    write_records(low, rows)
    write_records(
        made,
        (
            {
                "cluster_id": f"c{j:06d}",
                "source": "bench",
                "member_ids": [f"r{2 * j}", f"r{2 * j + 1}"],
                "size": 2,
                "cohesion": 0.9,
                "coherent": True,
                "task_type": "qa",
            }
            for j in range(clusters)
        ),
    )
    try:
        from lmmixup.io.vectors import save_vectors, vectors_beside
    except ImportError:  # a version before the cluster stage saved them
        return made, low
    from lmmixup.backends.embed import load_embedder, record_text
    from lmmixup.config import ClusterConfig

    name = ClusterConfig().embedder
    texts = [record_text(r) for r in rows]
    vectors = load_embedder(name).encode(texts, description="embed members")
    save_vectors(vectors_beside(made), [r["id"] for r in rows], texts, vectors, name)
    return made, low


def bench_distill(
    server: LatencyServer, work: Path, clusters: int, concurrency: int, env: dict
) -> dict:
    made, low = write_clusters(work, clusters)
    cfg = work / "distill.yaml"
    # The "before" setting: batch size and concurrency both N (no --concurrency then).
    cfg.write_text(f"generator:\n  concurrency: {concurrency}\n  batch_size: {concurrency}\n")
    flag = ["--concurrency", str(concurrency)] if _has_flag("distill", "--concurrency", env) else []
    server.reset()
    times = _lmmixup(
        "distill", str(made), "--pool", str(low), "-o", str(work / "distilled.jsonl"),
        "--backend", "openai", "--base-url", server.base_url, "--model", "distiller",
        *flag, "-c", str(cfg), env=env,
    )  # fmt: skip
    return {
        "command": "distill",
        "clusters": clusters,
        "concurrency": concurrency,
        **times,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--scale", type=float, default=1.0, help="Fraction of 3,000 rows / 1,500 clusters."
    )
    parser.add_argument("--only", choices=("rate", "distill"), default=None)
    parser.add_argument("--rate-concurrency", type=int, default=256)
    parser.add_argument("--distill-concurrency", type=int, default=128)
    args = parser.parse_args()
    import lmmixup

    print(f"lmmixup from {Path(lmmixup.__file__).parent}; {machine_note()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp, LatencyServer() as server:
        env = {**os.environ, "LMMIXUP_CACHE": str(Path(tmp) / "cache"), "OPENAI_API_KEY": "x"}
        runs = []
        if args.only in (None, "rate"):
            (Path(tmp) / "rate").mkdir()
            result = bench_rate(
                server, Path(tmp) / "rate", int(3000 * args.scale), args.rate_concurrency, env
            )
            runs.append(result | server.stats(args.rate_concurrency))
            print(json.dumps(runs[-1]), flush=True)
        if args.only in (None, "distill"):
            (Path(tmp) / "distill").mkdir()
            result = bench_distill(
                server, Path(tmp) / "distill", int(1500 * args.scale), args.distill_concurrency, env
            )
            runs.append(result | server.stats(args.distill_concurrency))
            print(json.dumps(runs[-1]), flush=True)


if __name__ == "__main__":
    main()
