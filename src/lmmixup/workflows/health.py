"""What a finished run's outputs say about its own result: warnings a user cannot miss.

`check_run(run_dir)` reads the stage folders of a run directory (manifests, rated records,
split, clusters, distilled pairs, the training set) and returns a `RunWarning` for each sign
that the result is weak: a judge that barely separates the pool, a high bar that was lowered
or never reached, a low distill yield or few faithful pairs, a training set whose mix of
sources or task types moved far from the pool's, a budget filled from originals, no distilled
row at all, model calls that failed on prompts over the server's context or for most items.
Each warning has a stable `code`, a one-line `message` with the numbers and
`advice` (what to do).

`lmmixup run` prints them after its summary table and writes them to `summary.json`
(`"warnings"`), from which the report shows them at the top of its page. A stage whose files
are absent is not checked; reading never fails on a bad line (it is skipped).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from lmmixup.config import SplitConfig
from lmmixup.io.jsonl import iter_jsonl
from lmmixup.records import effective_score
from lmmixup.runtime.manifest import read_manifest
from lmmixup.stages.distill import GENERATION_ERROR
from lmmixup.stages.failures import distill_failures, rate_failures

# A judge that puts at least this share of the rated records in its two most common 0-5
# scores gives the split (and the re-rating, and selection's ranking) almost nothing to go
# by: six scores exist, and a judge that sees quality uses more than two of them.
SEPARATION_TOP_SCORES = 2
SEPARATION_MAX_SHARE = 0.8
# Below this many rated records a bunched histogram says little about the judge.
MIN_RATED_TO_JUDGE = 10

# Fewer than half of the clusters becoming a pair means most low-quality records are lost
# to the method (they stay unselected): the distiller, not the data, sets the result.
MIN_DISTILL_YIELD = 0.5
# Distilled pairs are meant to be high-quality data: when fewer than half of the complete
# pairs a distiller writes pass the verifier checks, it is wrong more often than right, and
# as the cheap checks miss errors, the pairs that passed deserve doubt too.
MIN_FAITHFUL_SHARE = 0.5
# Check flags that mean the distiller wrote no complete pair (counted by the yield instead).
NOT_A_PAIR = frozenset({"empty", "truncated"})

# A source or task type is checked when it holds at least this share of the pool (smaller
# ones are noise at usual budgets), and reported when its share of the training set is
# under a third or over three times its pool share (GSM8K: 33% of the pool, 3% of the set).
MIX_MIN_POOL_SHARE = 0.05
MIX_MAX_FACTOR = 3.0
# A fall is reported only when the set, at the pool's share, would hold this many rows of
# it: missing one expected row of a tiny budget is rounding, not a shift.
MIX_MIN_EXPECTED_ROWS = 3

# The one command that trains a distiller, and how a run then uses it.
TRAIN_DISTILLER = "lmmixup train distiller --run-dir runs/distiller"
DISTILLER_MODEL = "runs/distiller/grpo/final"
USE_DISTILLER = (
    f"then distill with it: `lmmixup run CONFIG --set distill.generator.model={DISTILLER_MODEL}` "
    f"(or `lmmixup distill ... --model {DISTILLER_MODEL}`)"
)
STRONGER_JUDGE = (
    "rate with a stronger judge (rate.judge.model, or a served model with "
    "rate.judge.backend openai), or let a capable judge rate a part and spread its ratings "
    "with rate.propagate"
)


@dataclass(frozen=True)
class RunWarning:
    """One sign that a run's result is weak: a stable code, the numbers, what to do."""

    code: str
    message: str
    advice: str

    def as_dict(self) -> dict:
        """The JSON form in summary.json: {code, message, advice}."""
        return asdict(self)


class RunFiles:
    """Tolerant reads of a run directory's stage folders: a missing or unreadable manifest
    reads as {}, a missing file as no records."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir)

    def manifest(self, stage: str) -> dict:
        return read_manifest(self.path / stage / "manifest.json") or {}

    def counts(self, stage: str) -> dict:
        counts = self.manifest(stage).get("counts")
        return counts if isinstance(counts, dict) else {}

    def config(self, stage: str, section: str) -> dict:
        config = self.manifest(stage).get("config")
        found = config.get(section) if isinstance(config, dict) else None
        return found if isinstance(found, dict) else {}

    def has(self, stage: str, name: str) -> bool:
        return (self.path / stage / name).is_file()

    def rows(self, stage: str, name: str) -> Iterator[dict]:
        """The records of STAGE/NAME (none when absent); unreadable lines are skipped."""
        path = self.path / stage / name
        if not path.is_file():
            return
        for line in iter_jsonl(path):
            if line.error is None and isinstance(line.value, dict):
                yield line.value


def check_run(run_dir: str | Path) -> list[RunWarning]:
    """Every warning the run's outputs call for, in the order of the stages."""
    run = RunFiles(run_dir)
    scores = _scores(run)
    warnings = [
        _judge_separation(run, scores),
        _high_bar(run, scores),
        _distill_yield(run),
        _faithful_share(run),
        *_mix_shift(run),
        _budget(run),
        *_failed_calls(run),
    ]
    return [warning for warning in warnings if warning is not None]


def _failed_calls(run: RunFiles) -> list[RunWarning]:
    """Model calls that failed where a plain re-run will not help (prompts over the server's
    context) or that failed for most items (`stages.failures`)."""
    notes = {
        "rate": rate_failures(run.counts("rate")),
        "rerate": rate_failures(run.counts("rerate")),
        "distill": distill_failures(run.counts("distill"), GENERATION_ERROR),
    }
    return [
        RunWarning("model_calls_failed", f"{stage}: {note.message}", note.advice)
        for stage, note in notes.items()
        if note is not None
    ]


def _score(record: dict) -> int | None:
    rating = record.get("rating")
    if not isinstance(rating, dict):
        return None
    try:
        return effective_score(rating)
    except (KeyError, TypeError, ValueError):
        return None


def _scores(run: RunFiles) -> Counter:
    """Rated records per effective 0-5 score (rate/rated.jsonl)."""
    return Counter(s for r in run.rows("rate", "rated.jsonl") if (s := _score(r)) is not None)


def _share(part: float, whole: float) -> str:
    return f"{part / whole:.0%}" if whole else "0%"


def _judge_separation(run: RunFiles, scores: Counter) -> RunWarning | None:
    rated = sum(scores.values())
    if rated < MIN_RATED_TO_JUDGE:
        return None
    top = scores.most_common(SEPARATION_TOP_SCORES)
    bunched = sum(n for _, n in top)
    if bunched / rated < SEPARATION_MAX_SHARE:
        return None
    bands = ", ".join(f"score {s}: {n}" for s, n in sorted(top))
    message = (
        f"the judge barely separates the pool: {bunched} of {rated} rated records "
        f"({_share(bunched, rated)}) got one of {len(top)} scores of 0-5 ({bands})"
    )
    agreement = run.counts("rate").get("agreement")
    if isinstance(agreement, dict):
        exact, baseline = agreement.get("exact"), agreement.get("majority_class_baseline")
        numbers = isinstance(exact, int | float) and isinstance(baseline, int | float)
        if numbers and exact <= baseline:
            message += (
                f"; the scores spread from it (rate.propagate) match held-out judge "
                f"ratings {exact:.0%} of the time, no better than always saying the most "
                f"common score ({baseline:.0%})"
            )
    return RunWarning(
        "judge_no_separation",
        message,
        f"{STRONGER_JUDGE}; the rated file shows what it saw (rate/rated.jsonl)",
    )


def _high_bar(run: RunFiles, scores: Counter) -> RunWarning | None:
    if not scores or not run.manifest("split"):
        return None
    split = run.config("split", "split")
    defaults = SplitConfig()
    threshold = split.get("threshold", defaults.threshold)
    fraction = split.get("high_fraction", defaults.high_fraction)
    high = [s for r in run.rows("split", "high.jsonl") if (s := _score(r)) is not None]
    rated = sum(scores.values())
    if max(scores) < threshold:
        took = (
            f"split took the top {fraction:.0%} ({len(high)} records) as high instead"
            if fraction
            else "the high file is empty, so the training set has no high originals"
        )
        return RunWarning(
            "nothing_high",
            f"nothing reached the high bar: none of {rated} rated records scored "
            f">= {threshold} of 0-5 (best: {max(scores)}); {took}",
            "use a judge whose scores reach the bar (rate.judge.model, or a served model "
            "with rate.judge.backend openai); "
            + (
                "rows taken as high here are only the best of what this judge saw, not high "
                "quality by its own bar"
                if fraction
                else "split.high_fraction takes a top share instead, but that is only the best "
                "of what this judge saw, not high quality"
            ),
        )
    below = sum(score < threshold for score in high)
    if not fraction or not below:
        return None
    return RunWarning(
        "high_bar_lowered",
        f"the high bar was lowered: split took the top {fraction:.0%} as high "
        f"({len(high)} records), {below} of them scored below the bar (>= {threshold} of 0-5)",
        "drop split.high_fraction to keep the bar (split.threshold), or rate with a judge "
        "whose scores reach it",
    )


# What a common reject reason means for the user, added to the yield warning's advice.
REASON_HINTS = {
    "incoherent": "clusters below cluster.min_cohesion join unrelated samples and are not "
    "merged; a larger pool of redundant samples or smaller clusters (cluster.max_size) give "
    "more coherent ones",
    "truncated": "replies that hit distill.max_new_tokens (often a model repeating itself)",
}


def _distill_yield(run: RunFiles) -> RunWarning | None:
    if not run.manifest("distill"):
        return None
    clusters = run.counts("cluster").get("clusters")
    if not isinstance(clusters, int):
        clusters = sum(1 for _ in run.rows("cluster", "clusters.jsonl"))
    distilled = sum(1 for _ in run.rows("distill", "distilled.jsonl"))
    if not clusters or distilled / clusters >= MIN_DISTILL_YIELD:
        return None
    reasons = run.counts("distill").get("reject_reasons")
    if not isinstance(reasons, dict):
        reasons = Counter(str(r.get("reason")) for r in run.rows("distill", "rejects.jsonl"))
    top = Counter({str(k): v for k, v in reasons.items() if isinstance(v, int)}).most_common(3)
    why = "; top reject reasons: " + ", ".join(f"{k} {v}" for k, v in top) if top else ""
    advice = (
        f"a small distiller writes few usable merges: train one (`{TRAIN_DISTILLER}`) and "
        f"set distill.generator.model to {DISTILLER_MODEL}, or to a capable model; each "
        "reject and its reason is in distill/rejects.jsonl"
    )
    for reason, hint in REASON_HINTS.items():
        if reason in reasons:
            advice += f"; {reason}: {hint}"
    return RunWarning(
        "low_distill_yield",
        f"low distill yield: {distilled} of {clusters} clusters "
        f"({_share(distilled, clusters)}) became a distilled pair{why}",
        advice,
    )


def failed_checks(checks: object) -> list[str] | None:
    """The verifier checks a distilled pair failed (its `checks` flags, and any check whose
    value is False); None when the record carries no `checks` mapping."""
    if not isinstance(checks, dict):
        return None
    flags = checks.get("flags")
    failed = [str(flag) for flag in flags] if isinstance(flags, list) else []
    return failed + [name for name, value in checks.items() if value is False]


def _faithful_share(run: RunFiles) -> RunWarning | None:
    """Of the complete pairs the distiller wrote (distilled, or rejected by a check rather than
    for having no complete pair), the share that passes every check."""
    passed, failed_ids, failures = 0, set(), Counter()
    for record in run.rows("distill", "distilled.jsonl"):
        failed = failed_checks(record.get("checks"))
        if failed:
            failed_ids.add(record.get("id"))
            failures.update(failed)
        elif failed is not None:
            passed += 1
    for reject in run.rows("distill", "rejects.jsonl"):
        raw = reject.get("raw")
        failed = failed_checks(raw.get("checks")) if isinstance(raw, dict) else None
        if failed and not NOT_A_PAIR.intersection(failed):
            failures.update(failed)
            failed_ids.add(reject.get("id"))
    written = passed + len(failed_ids)
    if not written or passed / written >= MIN_FAITHFUL_SHARE:
        return None
    in_set = sum(1 for r in run.rows("select", "train.jsonl") if r.get("id") in failed_ids)
    top = ", ".join(f"{name} {n}" for name, n in failures.most_common(3))
    return RunWarning(
        "low_faithful_share",
        f"few faithful pairs: {passed} of {written} complete pairs the distiller wrote "
        f"({_share(passed, written)}) pass every verifier check (failed: {top})"
        + (f"; {in_set} failing pairs are in the training set" if in_set else ""),
        "read the failing pairs' `checks` in distill/rejects.jsonl; a trained distiller "
        f"(`{TRAIN_DISTILLER}`) or a capable distill.generator.model writes faithful merges, "
        "and distill.candidates > 1 keeps the best of several",
    )


def _mix_shift(run: RunFiles) -> list[RunWarning]:
    pool_stage = "import" if run.has("import", "pool.jsonl") else "rate"
    pool_file = "pool.jsonl" if pool_stage == "import" else "rated.jsonl"
    pool = [(r.get("source"), r.get("task_type")) for r in run.rows(pool_stage, pool_file)]
    train = [(r.get("source"), r.get("task_type")) for r in run.rows("select", "train.jsonl")]
    if not pool or not train:
        return []
    found = []
    for index, what in enumerate(("source", "task type")):
        if any(row[index] is None for row in pool):
            continue  # task types are compared only when every pool record names one
        shifts = _shifts(Counter(r[index] for r in pool), Counter(r[index] for r in train))
        if shifts:
            message = f"the training set's mix of {what}s moved far from the pool's: "
            found.append(RunWarning("mix_shift", message + "; ".join(shifts), MIX_ADVICE[what]))
    return found


MIX_ADVICE = {
    "source": "selection ranks by score, so a judge that scores one kind of data low drops it "
    "(split's per_source counts show where): rate with a judge that rates it fairly, or draw "
    "the pool closer to the mix you want (import.sources[].sample)",
    "task type": "selection ranks by score, so a judge that scores one task type low drops it: "
    "rate with rate.rubric_by_task: true or a stronger judge, or keep each task type's share "
    "with select.per_task: true",
}


def _shifts(pool: Counter, train: Counter) -> list[str]:
    """'NAME x% of the pool (a of b), y% of the set (c of d)' for each share that moved."""
    pool_total, train_total = sum(pool.values()), sum(train.values())
    shifts = []
    for name, count in pool.most_common():
        pool_share = count / pool_total
        set_share = train[name] / train_total
        if pool_share < MIX_MIN_POOL_SHARE:
            continue
        fell = (
            set_share < pool_share / MIX_MAX_FACTOR
            and pool_share * train_total >= MIX_MIN_EXPECTED_ROWS
        )
        if fell or set_share > pool_share * MIX_MAX_FACTOR:
            shifts.append(
                f"{name} {pool_share:.0%} of the pool ({count} of {pool_total}), "
                f"{set_share:.0%} of the set ({train[name]} of {train_total})"
            )
    return shifts


def _budget(run: RunFiles) -> RunWarning | None:
    if not run.has("select", "train.jsonl"):
        return None
    counts = run.counts("select")
    ratio = run.config("select", "select").get("mixup_ratio")
    requested = _origin_count(counts, "requested")
    if requested == 0 or ratio == 0:
        return None  # the config asked for no distilled rows
    rows = list(run.rows("select", "train.jsonl"))
    distilled = sum(1 for r in rows if r.get("origin") == "distilled")
    asked = f"select asked for {requested}" if requested is not None else "select asked for some"
    if distilled == 0:
        return RunWarning(
            "no_distilled_in_set",
            f"no distilled row reached the training set: {asked} distilled rows, and all "
            f"{len(rows)} rows are originals",
            f"train a distiller with one command: `{TRAIN_DISTILLER}`; {USE_DISTILLER}",
        )
    filled = _origin_count(counts, "filled_shortfall", "original")
    if filled is None:
        filled = sum(
            1
            for r in run.rows("select", "train.why.jsonl")
            if r.get("filled_shortfall") is True and r.get("origin") == "original"
        )
    short = requested is not None and distilled < requested
    if not filled and not short:
        return None
    return RunWarning(
        "budget_from_originals",
        f"the budget was filled from originals: {asked} distilled rows, {distilled} of "
        f"{len(rows)} rows are distilled, {filled} originals filled the gap "
        "(filled_shortfall in select/train.why.jsonl)",
        f"more distilled pairs need a better distiller: train one (`{TRAIN_DISTILLER}`) and "
        f"set distill.generator.model to {DISTILLER_MODEL}; or lower select.mixup_ratio to "
        "what the distiller delivers",
    )


def _origin_count(counts: dict, key: str, origin: str = "distilled") -> int | None:
    """counts[key][origin] of select's counts when it is a number."""
    value = counts.get(key)
    found = value.get(origin) if isinstance(value, dict) else None
    return found if isinstance(found, int) and not isinstance(found, bool) else None
