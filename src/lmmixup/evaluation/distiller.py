"""SPEC stage 9, first part: distillers compared on held-out MIXTURE data (`grpo_test.jsonl`).

Each model answers every test record's prompt (`mixture.prompt_messages`, the prompt
`lmmixup distill` sends) with the distiller's decoding (`distill.distill_params`: greedy,
repetition penalty 1.05, stop after `</answer>`); replies are cached in the call cache, so
a re-run only generates what is new. Per model:

- format compliance: the share of replies that are well formed (one think block, one answer
  block, only whitespace around), whose answer follows the task layout, and both, by the
  definition `distill` and the GRPO format reward use (`distill.reply_format`). The reply
  is read as the model wrote it (`distill.closed_reply`): the `</answer>` a stop string stood
  for is put back; an answer left open at end-of-sequence stays open and counts as neither;
- the GRPO reward components against the record's answer (quality needs a library; without
  one, quality and the total are null) and the weighted total;
- judge ratings of the pairs parsed from the answers (`distill.answer_to_pair`): mean raw
  Overall (1-10) and compressed score (0-5), over all records and per task type. A reply with
  no pair is counted as `no_pair` and a failed rating as `failed`; neither gets a score.

Outputs: OUT/results.json, OUT/results.md (models as columns) and OUT/generations/<label>.jsonl.
"""

from __future__ import annotations

import gc
import json
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from lmmixup.backends.base import Generation
from lmmixup.config import OPERATIONAL, BackendConfig, DistillConfig, Section
from lmmixup.errors import LmmixupError
from lmmixup.io.cache import CallCache
from lmmixup.io.jsonl import write_records
from lmmixup.io.validate import MIXTURE_RECORD, read_checked
from lmmixup.markdown import markdown_table
from lmmixup.method.prompt import prompt_messages
from lmmixup.method.reply import answer_to_pair, reply_format
from lmmixup.progress import progress
from lmmixup.rewards.config import COMPONENTS, RewardSet, RewardSettings, load_reward_set
from lmmixup.runtime.executor import BatchFn
from lmmixup.stages.distill import distill_params
from lmmixup.stages.distill_drafts import closed_reply
from lmmixup.training.trainer import FINAL_DIR

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
GENERATIONS_DIR = "generations"
_LABEL = re.compile(r"[^A-Za-z0-9_.-]+")


class EvalDistillerConfig(Section):
    """`lmmixup eval distiller`: how replies are generated, judged and scored."""

    max_new_tokens: int = Field(
        512, ge=16, description="Tokens a distiller may write per record (the paper allows 2,400)."
    )
    repetition_penalty: float = Field(
        1.05, ge=1.0, description="Repetition penalty of the greedy decoding (paper: 1.05)."
    )
    batch_size: int = Field(
        8, ge=1, description="Prompts per generate call.", json_schema_extra=OPERATIONAL
    )
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", description="Weights dtype of the evaluated models (auto = bf16 only where native)."
    )
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N test records.")
    judge: BackendConfig = Field(
        default_factory=BackendConfig, description="The rating judge (default: bundled SmolLM2)."
    )
    judge_mode: Literal["auto", "logprob", "generate"] = Field(
        "auto",
        description="logprob: expected Overall from the score-token probabilities (hf judges); generate: the judge writes the JSON rating; auto: logprob for an hf judge, generate for a server.",
    )
    rewards: RewardSettings = Field(
        default_factory=RewardSettings,
        description="The reward components; without quality_library, quality and the total are null.",
    )


@dataclass(frozen=True)
class ModelSpec:
    """A model to evaluate and the label its column and files carry."""

    label: str
    model: str


def parse_model_spec(text: str) -> ModelSpec:
    """`LABEL=MODEL` or just `MODEL` (labelled by its last path part or bundled name)."""
    label, sep, model = text.partition("=")
    if not sep:
        model = text
        parts = [part for part in model.removeprefix("bundled:").split("/") if part]
        label = parts[-1] if parts else model
        if label == FINAL_DIR and len(parts) > 1:  # runs/distiller/sft/final -> sft
            label = parts[-2]
    if not model:
        raise LmmixupError(f"model spec {text!r}: expected MODEL or LABEL=MODEL")
    return ModelSpec(_LABEL.sub("_", label).strip("_") or "model", model)


def unique_specs(texts: Sequence[str]) -> list[ModelSpec]:
    """The parsed specs; an error when two share a label."""
    specs = [parse_model_spec(text) for text in texts]
    labels = [spec.label for spec in specs]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise LmmixupError(f"two models share the label {duplicates}; name them LABEL=MODEL")
    return specs


# ---------------------------------------------------------------------------- generation


def generate_replies(
    model: str, records: list[dict], cfg: EvalDistillerConfig, cache: CallCache
) -> list[Generation]:
    """Greedy distiller replies of one model to every record, served from the cache when known."""
    from lmmixup.backends import load_generator

    params = distill_params(
        DistillConfig(max_new_tokens=cfg.max_new_tokens, repetition_penalty=cfg.repetition_penalty)
    )
    backend = BackendConfig(model=model, dtype=cfg.dtype, batch_size=cfg.batch_size)
    generator = load_generator(backend, cache)
    prompts = [prompt_messages(record) for record in records]
    replies: list[Generation] = []
    try:
        with progress(f"generate ({model})", total=len(prompts)) as advance:
            for start in range(0, len(prompts), cfg.batch_size):
                batch = prompts[start : start + cfg.batch_size]
                replies += generator.generate(batch, params)
                advance(len(batch))
        return replies
    finally:
        del generator  # free the model before the next one loads
        gc.collect()


# ---------------------------------------------------------------------------- measures


def format_flags(text: str, task_type: str) -> dict[str, bool]:
    """Whether a reply is well formed, whether its answer follows the task layout, and both."""
    form = reply_format(text, task_type)
    return {
        "well_formed": form.well_formed,
        "task_pattern": form.layout,
        "compliant": form.compliant,
    }


def parsed_pair(text: str, task_type: str) -> dict[str, str] | None:
    """The (prompt, completion) pair a reply's answer holds, None when it holds none."""
    parsed = reply_format(text, task_type).parsed
    pair = None if parsed is None else answer_to_pair(parsed.answer, task_type)
    return None if pair is None else {"prompt": pair[0], "completion": pair[1]}


def judge_rows(rows: list[dict], judge: BatchFn, batch_size: int) -> list[dict]:
    """Each row with its `rating` (None and `rating_error` on failure), in batches."""
    rated: list[dict] = []
    with progress("judge", total=len(rows)) as advance:
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            rated += judge(batch)
            advance(len(batch))
    return rated


def _mean(values: Sequence[float]) -> float | None:
    return round(statistics.fmean(values), 4) if values else None


def rating_summary(entries: Sequence[dict]) -> dict[str, Any]:
    """Counts and mean Overall (1-10, expected value where the judge gives one) and score (0-5)."""
    ratings = [e["rating"] for e in entries if e.get("rating")]
    return {
        "records": len(entries),
        "rated": len(ratings),
        "no_pair": sum(e["pair"] is None for e in entries),
        "failed": sum(e["pair"] is not None and not e.get("rating") for e in entries),
        "overall": _mean([r.get("expected_overall", r["overall"]) for r in ratings]),
        "score": _mean([r["score"] for r in ratings]),
    }


def model_results(entries: list[dict], seconds: float) -> dict[str, Any]:
    """One model's summary from its per-record entries."""
    by_task: dict[str, list[dict]] = {}
    for entry in entries:
        by_task.setdefault(entry["task_type"], []).append(entry)
    return {
        "generation": {
            "seconds": round(seconds, 2),
            "truncated": sum(e["finish_reason"] == "length" for e in entries),
            "errors": sum(e["error"] is not None for e in entries),
        },
        "format": {
            key: _mean([float(e["format"][key]) for e in entries])
            for key in ("well_formed", "task_pattern", "compliant")
        },
        "rewards": {
            name: _mean([e["rewards"][name] for e in entries if name in e["rewards"]])
            for name in (*COMPONENTS, "total")
        },
        "judge": {
            "all": rating_summary(entries),
            "by_task": {task: rating_summary(group) for task, group in sorted(by_task.items())},
        },
    }


def record_entries(
    records: list[dict], replies: list[Generation], rewards: RewardSet
) -> list[dict]:
    """Per-record entries of one model: reply, format flags, reward values, parsed pair."""
    texts = [closed_reply(reply) if reply.ok else "" for reply in replies]
    kinds = [record["task_type"] for record in records]
    scores = rewards.score(texts, task_type=kinds, reference=[r["answer"] for r in records])
    return [
        {
            "id": record["id"],
            "task_type": kind,
            "output": text,
            "finish_reason": reply.finish_reason,
            "error": reply.error,
            "format": format_flags(text, kind),
            "rewards": {name: values[row] for name, values in scores.items()},
            "pair": parsed_pair(text, kind),
        }
        for row, (record, reply, text, kind) in enumerate(
            zip(records, replies, texts, kinds, strict=True)
        )
    ]


def attach_ratings(entries: list[dict], judge: BatchFn, batch_size: int) -> None:
    """Judge every entry's pair and store its `rating` (None when the judge failed)."""
    with_pair = [entry for entry in entries if entry["pair"] is not None]
    rows = [{"id": entry["id"], **entry["pair"]} for entry in with_pair]
    for entry, rated in zip(with_pair, judge_rows(rows, judge, batch_size), strict=True):
        entry["rating"] = rated.get("rating")
        if rated.get("rating_error"):
            entry["rating_error"] = rated["rating_error"]


# ---------------------------------------------------------------------------- the report


def _cell(value: Any, percent: bool = False) -> str:
    if value is None:
        return "–"
    if percent:
        return f"{100 * value:.1f}%"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def results_markdown(results: dict[str, Any]) -> str:
    """The side-by-side table: one row per measure, one column per model."""
    header, rows = results_table(results)
    table = markdown_table(header, rows, right_from=1)
    models = results["models"]
    title = f"# Distiller evaluation on {results['test']} ({results['records']} records)"
    legend = "\n".join(f"- **{label}**: `{models[label]['model']}`" for label in models)
    return "\n".join([title, "", legend, "", *table]) + "\n"


def results_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The header (measure, then each model's label) and one row of cells per measure."""
    models = results["models"]
    labels = list(models)
    rows: list[tuple[str, list[str]]] = []

    def add(name: str, pick: Callable[[dict], Any], percent: bool = False) -> None:
        rows.append((name, [_cell(pick(models[label]), percent) for label in labels]))

    for key, name in (("well_formed", "well formed"), ("task_pattern", "task layout")):
        add(f"format: {name}", lambda m, key=key: m["format"][key], percent=True)
    add("format: compliant (both)", lambda m: m["format"]["compliant"], percent=True)
    for name in (*COMPONENTS, "total"):
        add(f"reward: {name}", lambda m, name=name: m["rewards"][name])
    tasks = sorted({task for m in models.values() for task in m["judge"]["by_task"]})
    for scope in ("all", *tasks):

        def group(m: dict, scope: str = scope) -> dict:
            return m["judge"]["all"] if scope == "all" else m["judge"]["by_task"].get(scope, {})

        add(f"judge overall 1-10: {scope}", lambda m, g=group: g(m).get("overall"))
        add(f"judge score 0-5: {scope}", lambda m, g=group: g(m).get("score"))
    add("judged / records", lambda m: f"{m['judge']['all']['rated']} / {m['records']}")
    add("no pair parsed", lambda m: m["judge"]["all"]["no_pair"])
    add("judge failures", lambda m: m["judge"]["all"]["failed"])
    add("truncated replies", lambda m: m["generation"]["truncated"])
    return ["measure", *labels], [[name, *cells] for name, cells in rows]


# ---------------------------------------------------------------------------- the command


def load_judge(cfg: EvalDistillerConfig, cache: CallCache) -> BatchFn:
    """The rating judge's batch function: the rate stage's `JudgeStage`, opened here. A spent
    request cap (`judge.max_requests`) stops the evaluation rather than counting as failed
    ratings."""
    from lmmixup.config import RateConfig
    from lmmixup.stages.judge import JudgeStage

    stage = JudgeStage(RateConfig(judge=cfg.judge, mode=cfg.judge_mode), cache.path)
    stage.open()

    def judge_or_stop(batch: list[dict]) -> list[dict]:
        rated = stage.process(batch)
        if stage.should_stop():
            raise LmmixupError(
                f"{stage.stop_reason}; the judge's replies are cached: re-run to continue"
            )
        return rated

    return judge_or_stop


def evaluate_distillers(
    models: Sequence[ModelSpec],
    test_path: str | Path,
    out_dir: str | Path,
    cfg: EvalDistillerConfig,
    *,
    judge: BatchFn | None = None,
    rewards: RewardSet | None = None,
    cache: CallCache | None = None,
) -> dict[str, Any]:
    """Generate, score and judge every model on the test records; write the reports.

    The test file is checked whole before any model loads. The judge, the rewards and the
    cache default to the configured ones (tests pass fakes). Returns the results written to
    OUT/results.json.
    """
    records = read_checked(test_path, MIXTURE_RECORD)[: cfg.limit]
    cache = cache or CallCache()
    rewards = rewards or load_reward_set(cfg.rewards, require_quality=False)
    out = Path(out_dir)
    entries_by_model: dict[str, list[dict]] = {}
    seconds: dict[str, float] = {}
    for spec in models:
        started = time.perf_counter()
        replies = generate_replies(spec.model, records, cfg, cache)
        seconds[spec.label] = time.perf_counter() - started
        entries_by_model[spec.label] = record_entries(records, replies, rewards)
    judge = judge or load_judge(cfg, cache)
    results: dict[str, Any] = {
        "test": str(test_path),
        "records": len(records),
        "config": cfg.model_dump(mode="json"),
        "models": {},
    }
    for spec in models:
        entries = entries_by_model[spec.label]
        attach_ratings(entries, judge, cfg.judge.batch_size)
        write_records(out / GENERATIONS_DIR / f"{spec.label}.jsonl", entries)
        summary = model_results(entries, seconds[spec.label])
        results["models"][spec.label] = {"model": spec.model, "records": len(entries), **summary}
    (out / RESULTS_JSON).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / RESULTS_MD).write_text(results_markdown(results), encoding="utf-8")
    return results
