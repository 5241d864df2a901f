"""Distillation throughput with the bundled model: one cluster at a time vs batched.

    .venv/bin/python bench/bench_distill.py --clusters 16 --batch-size 16

Generated tokens per second for the same clusters and prompts (greedy, the demo's settings).
Prints a Markdown block for docs/BENCHMARKS.md. No call cache is used.
"""

from __future__ import annotations

import argparse
import time

from common import bundled_pool, machine_note

from lmmixup.backends.embed import load_embedder, record_text
from lmmixup.backends.hf import HFChatModel
from lmmixup.config import ClusterConfig, DistillConfig
from lmmixup.method.prompt import build_messages
from lmmixup.method.reply import parse_output
from lmmixup.stages.cluster import cluster_records
from lmmixup.stages.distill import distill_params
from lmmixup.stages.distill_drafts import closed_reply


def prompts_for(clusters: int, cfg: DistillConfig) -> list[list[dict]]:
    pool = bundled_pool(sharegpt=clusters * 3, gsm8k=clusters)
    vectors = load_embedder("bundled:minilm").encode([record_text(r) for r in pool])
    groups = cluster_records(
        pool, vectors, ClusterConfig(min_size=2, max_size=6, mean_size=4, std_size=1)
    )
    by_id = {r["id"]: r for r in pool}
    return [
        build_messages([by_id[i] for i in g["member_ids"]], "qa", cfg) for g in groups[:clusters]
    ]


def measure(
    model: HFChatModel, prompts: list, cfg: DistillConfig, batch: int
) -> tuple[float, int, int]:
    params = distill_params(cfg)
    start, tokens, parsed = time.perf_counter(), 0, 0
    for i in range(0, len(prompts), batch):
        for g in model.generate(prompts[i : i + batch], params):
            tokens += g.completion_tokens
            parsed += parse_output(closed_reply(g)) is not None
    return time.perf_counter() - start, tokens, parsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clusters", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()
    cfg = DistillConfig(
        max_new_tokens=args.max_new_tokens, max_member_chars=500, answer_prefix="<answer>\nQ:"
    )
    prompts = prompts_for(args.clusters, cfg)
    model = HFChatModel(
        "bundled:smollm2-135m-instruct", dtype="float32", batch_size=args.batch_size
    )
    rows = []
    for label, batch in (
        ("one cluster at a time", 1),
        (f"batched ({args.batch_size}, length-bucketed)", args.batch_size),
    ):
        seconds, tokens, parsed = measure(model, prompts, cfg, batch)
        rows.append((label, seconds, tokens, parsed))
    single, batched = rows[0][2] / rows[0][1], rows[1][2] / rows[1][1]
    print(
        f"Command: `.venv/bin/python bench/bench_distill.py --clusters {args.clusters} --batch-size {args.batch_size} "
        f"--max-new-tokens {args.max_new_tokens}`"
    )
    print(
        f"Model: bundled SmolLM2-135M-Instruct, float32, greedy, repetition penalty 1.05. Machine: {machine_note()}.\n"
    )
    print("| path | clusters | wall (s) | generated tokens | tokens/s | parsable |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, seconds, tokens, parsed in rows:
        print(
            f"| {label} | {len(prompts)} | {seconds:.1f} | {tokens} | {tokens / seconds:.1f} | {parsed} |"
        )
    print(f"\nSpeed-up batched/single: **{batched / single:.1f}x**.")


if __name__ == "__main__":
    main()
