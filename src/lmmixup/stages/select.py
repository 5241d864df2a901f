"""`lmmixup select`: the training set (distilled + original) and the baselines, as files.

The training set is prompt/completion JSONL that keeps each row's origin and lineage
(`member_ids` of a distilled row); `*.why.jsonl` says why each row was chosen. `SELECT`
declares it as the last stage of `lmmixup run`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from lmmixup.backends.embed import load_embedder, record_text
from lmmixup.config import RunConfig, SelectConfig
from lmmixup.io.formats import RecordOutput, beside
from lmmixup.io.jsonl import write_records
from lmmixup.io.validate import RATED_RECORD, read_checked
from lmmixup.records import effective_score
from lmmixup.runtime.runner import StageDir
from lmmixup.runtime.spec import StageSpec

TRAIN_FIELDS = ("id", "prompt", "completion", "source", "task_type", "member_ids", "cluster_id")


def long_tail(records: list[dict], cfg: SelectConfig) -> np.ndarray:
    """Min-max normalised long-tail (diversity) scores of a set, within the set itself."""
    if not records:
        return np.zeros(0)
    texts = tuple(record_text(r) for r in records)
    return _long_tail_of(
        load_embedder(cfg.embedder, cfg.embed_device), cfg.long_tail_k, texts
    ).copy()


# An experiment selects several arms from the same candidate files (and checks every arm
# first): the last few sets' scores are kept so the same texts are embedded once.
@lru_cache(maxsize=4)
def _long_tail_of(embedder: Any, k: int, texts: tuple[str, ...]) -> np.ndarray:
    from lmmixup.method.selection import long_tail_scores, minmax

    vectors = embedder.encode(list(texts), description="embed for long-tail")
    return minmax(long_tail_scores(vectors, k=k))


def training_row(record: dict, origin: str) -> dict:
    """What a training-set row keeps of a record: the pair, its origin and its lineage."""
    row = {key: record[key] for key in TRAIN_FIELDS if key in record}
    row["origin"] = origin
    if record.get("rating"):
        row["score"] = effective_score(record["rating"])
    return row


def write_selection(selection, output: Path | RecordOutput) -> dict:
    """Write the rows (in the output's format) and the reasons (JSONL); returns the summary
    with the composition."""
    out = output if isinstance(output, RecordOutput) else RecordOutput(Path(output))
    origins = {why["id"]: why["origin"] for why in selection.why}
    rows = [training_row(r, origins[r["id"]]) for r in selection.records]
    out.write(rows)
    write_records(why_path(out.path), selection.why)
    summary = dict(selection.summary)
    summary["rows"] = len(rows)
    summary["by_origin"] = dict(Counter(row["origin"] for row in rows))
    summary["by_source"] = dict(Counter(row["source"] for row in rows))
    return summary


def why_path(output: Path) -> Path:
    """Why each row was chosen: OUTPUT.why.jsonl (`train.parquet` -> `train.why.jsonl`)."""
    return beside(output, "why")


def select_files(
    original: Path,
    mixup: Path,
    output: Path | RecordOutput,
    cfg: SelectConfig,
    allow_short: bool = False,
    allow_empty: bool = True,
) -> dict:
    """The method's selection: top distilled by long-tail + top originals by (score, long-tail),
    with `cfg.per_task` each side filled per task type (`mix_budget`).

    Both files must hold rated records; an empty one is allowed (the other side fills it)
    unless `allow_empty` is false, as for files a user names."""
    from lmmixup.method.selection import mix_budget

    originals = read_checked(original, RATED_RECORD, allow_empty=allow_empty)
    distilled = read_checked(mixup, RATED_RECORD, allow_empty=allow_empty)
    selection = mix_budget(
        originals,
        distilled,
        budget=cfg.budget,
        mixup_ratio=cfg.mixup_ratio,
        seed=cfg.seed,
        original_long_tail=long_tail(originals, cfg),
        mixup_long_tail=long_tail(distilled, cfg),
        allow_short=allow_short,
        per_task=cfg.per_task,
    )
    return write_selection(selection, output)


def _baselines(high_ids: Collection[str] | None, allow_short: bool) -> dict[str, Callable]:
    from lmmixup.method import selection as sel

    short = {"allow_short": allow_short}
    return {
        "random": lambda pool, cfg, lt: sel.random_subset(
            pool, budget=cfg.budget, seed=cfg.seed, **short
        ),
        "full": lambda pool, cfg, lt: sel.full_pool(pool, seed=cfg.seed),
        "high-only": lambda pool, cfg, lt: sel.high_only(
            pool, budget=cfg.budget, seed=cfg.seed, high_ids=high_ids, **short
        ),
        "low-only": lambda pool, cfg, lt: sel.low_only(
            pool, budget=cfg.budget, seed=cfg.seed, high_ids=high_ids, **short
        ),
        "high-low": lambda pool, cfg, lt: sel.high_low_mix(
            pool,
            budget=cfg.budget,
            high_ratio=1 - cfg.mixup_ratio,
            seed=cfg.seed,
            high_ids=high_ids,
            **short,
        ),
        "label-filtered": lambda pool, cfg, lt: sel.label_filtered(
            pool, budget=cfg.budget, seed=cfg.seed, **short
        ),
        "ds2-like": lambda pool, cfg, lt: sel.ds2_like(
            pool, budget=cfg.budget, long_tail=lt(), seed=cfg.seed, **short
        ),
    }


BASELINES = ("random", "full", "high-only", "low-only", "high-low", "label-filtered", "ds2-like")


def select_baseline(
    name: str,
    rated_pool: Path,
    output: Path | RecordOutput,
    cfg: SelectConfig,
    high: Path | None = None,
    allow_short: bool = False,
) -> dict:
    """A baseline selection of the rated pool at the same budget (`high-low` uses 1 - ratio as
    the high share). `high`: the split stage's high part, which then defines the high band of
    high-only, low-only and high-low (else score >= 4). The pool must hold rated records."""
    pool = read_checked(rated_pool, RATED_RECORD)
    high_ids = (
        {r["id"] for r in read_checked(high, RATED_RECORD, allow_empty=True)}
        if high is not None
        else None
    )
    selection = _baselines(high_ids, allow_short)[name](pool, cfg, lambda: long_tail(pool, cfg))
    return write_selection(selection, output)


def _run_select(stage: StageDir, cfg: RunConfig, inputs: dict[str, Path]) -> None:
    stage.counts.update(
        select_files(inputs["high"], inputs["kept"], stage.file("train.jsonl"), cfg.select)
    )


SELECT = StageSpec(
    "select",
    sections=("select",),
    reads={"high": "split.high", "kept": "rerate.kept"},
    outputs={"train": "train.jsonl", "why": "train.why.jsonl"},
    run=_run_select,
)
