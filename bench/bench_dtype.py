"""float32 vs bfloat16 on this machine's CPU: one forward pass of the bundled SmolLM2.

    .venv/bin/python bench/bench_dtype.py --batch 4 --tokens 256

Decides what `dtype: auto` should pick; prints a Markdown row per dtype.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import machine_note
from transformers import AutoModelForCausalLM

from lmmixup.backends.hf import pick_dtype
from lmmixup.io.assets import smollm2_checkpoint


def forward_seconds(dtype: torch.dtype, batch: int, tokens: int) -> float:
    model = AutoModelForCausalLM.from_pretrained(smollm2_checkpoint(), dtype=dtype).eval()
    ids = torch.randint(100, 10_000, (batch, tokens))
    with torch.inference_mode():
        model(input_ids=ids, logits_to_keep=1)  # warm-up
        start = time.perf_counter()
        model(input_ids=ids, logits_to_keep=1)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=256)
    args = parser.parse_args()
    print(
        f"Command: `.venv/bin/python bench/bench_dtype.py --batch {args.batch} --tokens {args.tokens}`"
    )
    print(
        f"Machine: {machine_note()}; torch CPU capability {torch.backends.cpu.get_cpu_capability()}; "
        f"`dtype: auto` picks {pick_dtype('auto')}.\n"
    )
    print("| dtype | forward (s) | tokens/s |")
    print("|---|---:|---:|")
    for dtype in (torch.float32, torch.bfloat16):
        seconds = forward_seconds(dtype, args.batch, args.tokens)
        print(f"| {dtype} | {seconds:.2f} | {args.batch * args.tokens / seconds:,.0f} |")


if __name__ == "__main__":
    main()
