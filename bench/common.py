"""Shared bits of the model benchmarks: the bundled pool and the machine's load."""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path

from lmmixup.config import ImportConfig
from lmmixup.io.jsonl import read_records
from lmmixup.stages.import_pool import import_pool


def bundled_pool(sharegpt: int, gsm8k: int, seed: int = 0) -> list[dict]:
    """A seeded sample of the bundled ShareGPT and GSM8K pairs (short ones, as in the demo)."""
    cfg = ImportConfig(
        min_prompt_chars=20,
        max_prompt_chars=400,
        min_completion_chars=20,
        max_completion_chars=800,
        seed=seed,
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pool.jsonl"
        import_pool(
            [{"path": "sharegpt", "sample": sharegpt}, {"path": "gsm8k", "sample": gsm8k}], out, cfg
        )
        return read_records(out)


def machine_note() -> str:
    """One line on the machine and its load, for the record."""
    load = os.getloadavg()
    busy = " (busy: times inflated)" if load[0] > (os.cpu_count() or 1) * 0.75 else ""
    return (
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"load average {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f} at the start{busy}"
    )


# Words that synthetic benchmark texts are made of.
WORDS = [
    "apple",
    "river",
    "engine",
    "garden",
    "planet",
    "violin",
    "market",
    "winter",
    "copper",
    "signal",
    "harbor",
    "pencil",
    "forest",
    "ladder",
    "rocket",
    "canyon",
    "museum",
    "bridge",
    "lantern",
    "meadow",
    "circuit",
    "falcon",
    "glacier",
    "theorem",
    "protein",
]
