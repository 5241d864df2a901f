"""How the distill verifiers treat correct merges and wrong ones, on a MIXTURE set.

Each MIXTURE example is a cluster of degraded variants (`members`) and the pair they were made
from (`answer`): a correct merge by construction. The script runs `verify_pair` on every
target with its own members (should pass) and with the members of the example `--shift`
places on (a merge of other samples: should fail), and counts the reasons.

    HF_HUB_OFFLINE=1 .venv/bin/lmmixup mixture build -o /tmp/mixture       # or the recipe's
    PYTHONPATH=src .venv/bin/python bench/bench_verifiers.py /tmp/mixture/sft.jsonl \
        /tmp/mixture/grpo_train.jsonl /tmp/mixture/grpo_test.jsonl
"""

from __future__ import annotations

import argparse
import collections
import json

from lmmixup.config import DistillConfig
from lmmixup.io.jsonl import read_records
from lmmixup.method.reply import answer_to_pair
from lmmixup.method.verify import verify_pair


def examples(paths: list[str]) -> list[dict]:
    """The MIXTURE examples of the files, with their target as a (prompt, completion) pair."""
    found = []
    for path in paths:
        for record in read_records(path):
            pair = answer_to_pair(record["answer"], record["task_type"])
            if pair is not None:
                found.append({**record, "pair": pair})
    return found


def reasons(items: list[dict], shift: int, cfg: DistillConfig) -> collections.Counter:
    """The first flag of each target checked against the members `shift` examples on
    ("pass" when none)."""
    counted: collections.Counter = collections.Counter()
    for index, item in enumerate(items):
        members = items[(index + shift) % len(items)]["members"]
        flags = verify_pair(*item["pair"], members, cfg).flags
        counted[flags[0] if flags else "pass"] += 1
    return counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("files", nargs="+", help="MIXTURE JSONL files (sft, grpo_train, ...)")
    parser.add_argument("--shift", type=int, default=1, help="Wrong members: this many on.")
    args = parser.parse_args()
    cfg = DistillConfig()
    items = examples(args.files)
    for label, shift in (("own members", 0), (f"members {args.shift} on", args.shift)):
        counted = reasons(items, shift, cfg)
        share = counted["pass"] / len(items)
        print(json.dumps({"targets": len(items), "with": label, "pass": counted["pass"],
                          "pass_share": round(share, 3), "reasons": dict(counted.most_common())}))  # fmt: skip


if __name__ == "__main__":
    main()
