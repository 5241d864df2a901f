"""A deliberately slow per-record stage, run as a subprocess by the kill -9 resume tests
(argv: run dir, record count, and optionally how many batches run at once)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lmmixup.io.jsonl import write_records
from lmmixup.runtime.executor import numbered, process_records
from lmmixup.runtime.runner import run_stage


def slow_double(batch: list[dict]) -> list[dict]:
    time.sleep(0.05)
    return [{"id": r["id"], "value": r["value"] * 2} for r in batch]


def main(run_dir: str, count: int, concurrency: int = 1) -> None:
    pool = Path(run_dir) / "input.jsonl"
    if not pool.exists():
        write_records(pool, ({"id": f"r{i}", "value": i} for i in range(count)))

    def body(stage):
        stage.counts.update(
            process_records(
                numbered(pool),
                slow_double,
                output=stage.file("out.jsonl"),
                rejects=stage.file("rejects.jsonl"),
                source=str(pool),
                batch_size=4,
                concurrency=concurrency,
            )
        )

    run_stage(run_dir, "double", inputs=[pool], config={"factor": 2}, body=body)


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:4]))
