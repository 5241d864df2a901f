"""Judge throughput and agreement: `logprob` mode vs `generate` mode, same model, same samples.

    .venv/bin/python bench/bench_judge_modes.py --samples 200

Prints a Markdown block for docs/BENCHMARKS.md. No call cache is used.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import bundled_pool, machine_note

from lmmixup.backends.base import GenParams
from lmmixup.backends.hf import HFChatModel
from lmmixup.method.rubric import build_rubric_logprob_prompt, build_rubric_messages, parse_rating
from lmmixup.stages.judge_scores import logprob_rating, score_distribution


def run(samples: int, batch_size: int, model_name: str) -> str:
    pool = bundled_pool(sharegpt=samples * 2 // 3, gsm8k=samples - samples * 2 // 3)
    model = HFChatModel(model_name, dtype="float32", batch_size=batch_size)

    start = time.perf_counter()
    prompts = [build_rubric_logprob_prompt(r["prompt"], r["completion"]) for r in pool]
    dist = score_distribution(
        model, [model.render(p.messages, p.assistant_prefix) for p in prompts]
    )
    logprob_s = time.perf_counter() - start
    logprob = [logprob_rating(row, model.name) for row in dist]

    start = time.perf_counter()
    replies = model.generate(
        [build_rubric_messages(r["prompt"], r["completion"]) for r in pool],
        GenParams(max_new_tokens=96),
    )
    generate_s = time.perf_counter() - start
    generated = [parse_rating(g.text) for g in replies]

    both = [
        (lp["expected_overall"], g.overall)
        for lp, g in zip(logprob, generated, strict=True)
        if g is not None and not isinstance(lp, str)
    ]
    lines = [
        f"Command: `.venv/bin/python bench/bench_judge_modes.py --samples {samples} --batch-size {batch_size}`",
        f"Model: {model_name} (float32). Machine: {machine_note()}.",
        "",
        "| mode | samples | wall (s) | samples/s | rated | failed |",
        "|---|---:|---:|---:|---:|---:|",
        f"| logprob | {len(pool)} | {logprob_s:.1f} | {len(pool) / logprob_s:.2f} | "
        f"{sum(not isinstance(x, str) for x in logprob)} | {sum(isinstance(x, str) for x in logprob)} |",
        f"| generate (96 new tokens max) | {len(pool)} | {generate_s:.1f} | {len(pool) / generate_s:.2f} | "
        f"{sum(g is not None for g in generated)} | {sum(g is None for g in generated)} |",
        "",
        f"Throughput ratio logprob/generate: **{generate_s / logprob_s:.1f}x**.",
    ]
    if len(both) >= 3:
        expected, written = np.array(both).T
        lines.append(
            f"Agreement on the {len(both)} samples both modes rated: |E[overall] - written overall| "
            f"mean {np.mean(np.abs(expected - written)):.2f}; within 1 point {np.mean(np.abs(expected - written) <= 1):.0%}; "
            f"Pearson r {np.corrcoef(expected, written)[0, 1]:.2f}."
        )
    else:
        lines.append(
            f"Agreement: generate mode produced a parsable rating for only {len(both)} samples."
        )
    spread = [x["expected_overall"] for x in logprob if not isinstance(x, str)]
    if spread:
        lines.append(
            f"logprob E[overall]: min {min(spread):.2f}, median {np.median(spread):.2f}, max {max(spread):.2f}."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model", default="bundled:smollm2-135m-instruct")
    args = parser.parse_args()
    print(run(args.samples, args.batch_size, args.model))


if __name__ == "__main__":
    main()
