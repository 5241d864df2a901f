"""The hf backend against llama.cpp's server, side by side on the same requests.

    LMMIXUP_LLAMA_SERVER=$(scripts/build_llama_server.sh) \
        PYTHONPATH=src .venv/bin/python bench/bench_local_vs_llama.py --clusters 30 --rows 100

Two workloads, the same prompts and decoding settings for both backends:
- distill: the distiller's prompts for `--clusters` clusters of the bundled pool (the demo's
  settings: pre-filled `<answer>\\nQ:`, stop at a blank line, 256 new tokens, greedy);
- rate: the judge's generate-mode prompts for `--rows` bundled rows (96 new tokens, greedy).

The hf backend runs the bundled SmolLM2-135M-Instruct (float32 on this CPU, `--batch-size`
rows at once); llama-server serves the bundled GGUF of the same model (Q4_1) with
`--threads` threads and `--slots` slots, reached by the openai backend with `--slots` requests
in flight. No call cache. Prints a Markdown table for docs/BENCHMARKS.md: wall time,
generated tokens and tokens a second per backend, and hf's time over llama.cpp's.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "servers"))

from bench_distill import prompts_for  # noqa: E402
from common import bundled_pool, machine_note  # noqa: E402
from llama_process import llama_server  # noqa: E402

from lmmixup.backends.base import GenParams  # noqa: E402
from lmmixup.backends.hf import HFChatModel  # noqa: E402
from lmmixup.backends.openai_chat import OpenAIChatModel  # noqa: E402
from lmmixup.config import DistillConfig, RateConfig  # noqa: E402
from lmmixup.stages.distill import distill_params  # noqa: E402
from lmmixup.stages.judge import judge_messages, judge_params  # noqa: E402

HF_MODEL = "bundled:smollm2-135m-instruct"


def timed(model, prompts: list, params: GenParams) -> tuple[float, int, int]:
    """Wall seconds, generated tokens and failed replies of one `generate` over all prompts."""
    start = time.perf_counter()
    replies = model.generate(prompts, params)
    seconds = time.perf_counter() - start
    return seconds, sum(r.completion_tokens for r in replies), sum(not r.ok for r in replies)


def workloads(clusters: int, rows: int) -> list[tuple[str, list, GenParams]]:
    distill_cfg = DistillConfig(
        max_new_tokens=256,
        max_member_chars=400,
        answer_prefix="<answer>\nQ:",
        extra_stops=["\n\n"],
    )
    rate_cfg = RateConfig()
    rated = bundled_pool(sharegpt=rows * 2 // 3, gsm8k=rows - rows * 2 // 3, seed=1)
    return [
        (f"distill, {clusters} clusters", prompts_for(clusters, distill_cfg), distill_params(distill_cfg)),
        (
            f"rate (generate), {len(rated)} rows",
            [judge_messages(record, rate_cfg) for record in rated],
            judge_params(rate_cfg, 0),
        ),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--llama-server", default=os.environ.get("LMMIXUP_LLAMA_SERVER"))
    parser.add_argument("--clusters", type=int, default=30)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16, help="hf backend batch size")
    parser.add_argument("--slots", type=int, default=4, help="llama-server slots (-np)")
    parser.add_argument("--threads", type=int, default=2, help="llama-server threads (-t)")
    args = parser.parse_args()
    if not args.llama_server:
        raise SystemExit(
            "give --llama-server or LMMIXUP_LLAMA_SERVER (scripts/build_llama_server.sh)"
        )
    os.environ.setdefault("OPENAI_API_KEY", "none")
    jobs = workloads(args.clusters, args.rows)
    note = machine_note()
    results = []
    hf = HFChatModel(HF_MODEL, dtype="auto", batch_size=args.batch_size)
    for label, prompts, params in jobs:
        results.append((label, "hf", *timed(hf, prompts, params)))
    del hf
    with tempfile.TemporaryDirectory() as tmp:
        server = llama_server(
            args.llama_server, Path(tmp), 1024 * args.slots, args.slots, args.threads
        )
        with server as url, OpenAIChatModel("smollm2", url, concurrency=args.slots) as llama:
            for label, prompts, params in jobs:
                results.append((label, "llama.cpp", *timed(llama, prompts, params)))
    print(
        "Command: `PYTHONPATH=src .venv/bin/python bench/bench_local_vs_llama.py "
        f"--clusters {args.clusters} --rows {args.rows} --batch-size {args.batch_size} "
        f"--slots {args.slots} --threads {args.threads}`. Machine: {note}.\n"
    )
    print(
        "| workload | backend | wall (s) | generated tokens | tokens/s | failed | hf / llama.cpp |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    walls = {(label, backend): seconds for label, backend, seconds, *_ in results}
    for label, backend, seconds, tokens, failed in results:
        ratio = walls[(label, "hf")] / walls[(label, "llama.cpp")] if backend == "hf" else None
        shown = "" if ratio is None else f"{ratio:.2f}x"
        print(f"| {label} | {backend} | {seconds:.1f} | {tokens} | {tokens / seconds:.1f} | {failed} | {shown} |")  # fmt: skip


if __name__ == "__main__":
    main()
