"""Functions the suite's YAMLs call through `!function`: local datasets, held-out scoring.

lm-eval calls each `custom_dataset` function with the task's metadata as keyword arguments.
"""

from __future__ import annotations

import math
from typing import Any

from lmmixup import evalsuite
from lmmixup.errors import LmmixupError

HELDOUT_SEPARATOR = "\n"  # between prompt and completion; scored as part of the completion


def _dataset_dict(**splits: list[dict]):
    from datasets import Dataset, DatasetDict

    return DatasetDict({name: Dataset.from_list(rows) for name, rows in splits.items()})


def gsm8k_dataset(**_: Any):
    """`test`: the evaluation rows; `train`: the few-shot rows, in order."""
    return _dataset_dict(
        test=evalsuite.gsm8k_rows(evalsuite.GSM8K_EVAL_ROWS),
        train=evalsuite.gsm8k_rows(evalsuite.GSM8K_FEWSHOT_ROWS),
    )


def gsm8k_mc_dataset(**_: Any):
    """`test`: the evaluation rows as multiple-choice items."""
    rows = evalsuite.gsm8k_rows(evalsuite.GSM8K_EVAL_ROWS)
    return _dataset_dict(test=evalsuite.gsm8k_mc_items(rows))


def heldout_dataset(heldout_file: str | None = None, **_: Any):
    """`test`: the held-out records of the file named by the metadata key `heldout_file`."""
    if not heldout_file:
        raise LmmixupError(f"{evalsuite.HELDOUT_TASK} needs metadata heldout_file=FILE")
    return _dataset_dict(test=evalsuite.read_heldout(heldout_file))


def heldout_target(doc: dict) -> str:
    """The scored continuation: the separator and the reference completion."""
    return HELDOUT_SEPARATOR + doc["completion"]


def heldout_results(doc: dict, results: list[tuple[float, bool]]) -> dict[str, tuple[float, int]]:
    """The completion's log-likelihood and its UTF-8 length, for the byte-level aggregations."""
    loglikelihood = results[0][0]
    size = len(heldout_target(doc).encode("utf-8"))
    pair = (loglikelihood, size)
    return {"byte_likelihood": pair, "logprob_per_byte": pair, "bits_per_byte": pair}


def logprob_per_byte(items: list[tuple[float, int]]) -> float:
    """Total log-likelihood (nats) over total bytes of all completions; higher is better."""
    return sum(ll for ll, _ in items) / sum(size for _, size in items)


def byte_likelihood(items: list[tuple[float, int]]) -> float:
    """exp(logprob_per_byte): the geometric-mean probability per byte, in 0..1; higher is better."""
    return math.exp(logprob_per_byte(items))
