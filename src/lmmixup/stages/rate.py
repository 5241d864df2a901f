"""The rate stage: judge the pool (or a fraction of it and propagate), or score with a library.

Output: the pool records with `rating` (or `rating: null` + `rating_error` for a failure,
which the next run retries). Resumable: records already rated are skipped. The judge
(`JudgeStage`) and the kNN-Bayes scorer (`KnnStage`) are per-record stages the run's
executor (`current_executor`: local, or Ray) runs; `RATE` and `RERATE` declare the two
stages of `lmmixup run` that rate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lmmixup.backends.embed import load_embedder, record_text
from lmmixup.config import RateConfig, RunConfig
from lmmixup.errors import LmmixupError
from lmmixup.io.cache import CallCache
from lmmixup.io.jsonl import read_records, write_records
from lmmixup.io.validate import POOL_RECORD, check_file
from lmmixup.method.knn_bayes import KnnBayesScorer, ScorerLibrary, load_task_scorers
from lmmixup.records import effective_score
from lmmixup.runtime.executor import RecordStage, StageRun, numbered
from lmmixup.runtime.executors import current_executor
from lmmixup.runtime.runner import StageDir
from lmmixup.runtime.spec import StageSpec
from lmmixup.stages.failures import rate_failures
from lmmixup.stages.judge import TRUNCATED_KEY, JudgeStage, is_rated

LIBRARY_DIR = "library"
HELD_OUT_FRACTION = 0.2


def chosen_for_judge(record_id: str, fraction: float, seed: int) -> bool:
    """A stable, seeded coin flip per id: the same records are judged on every resume."""
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _run(stage: RecordStage, pool: Path, output: Path, rejects: Path, select) -> StageRun:
    """Run a rating stage over the records of `pool` that `select` accepts (all by default)."""
    records = [(n, r) for n, r in numbered(pool) if select is None or select(r)]
    return current_executor().run(
        stage, records, output=output, rejects=rejects, source=str(pool), total=len(records)
    )


def judge_records(
    pool: Path,
    output: Path,
    rejects: Path,
    cfg: RateConfig,
    cache: CallCache | None,
    select=None,
    run_index: int = 0,
) -> dict:
    """Judge every record (or those `select` accepts); stops cleanly at a request cap."""
    stage = JudgeStage(cfg, None if cache is None else cache.path, run_index)
    run = _run(stage, pool, output, rejects, select)
    counts: dict = dict(run.counts)
    for key in ("mode", "mode_note", "usage"):  # the mode used: `auto` is resolved at open
        if key in run.report:
            counts[f"judge_{key}"] = run.report[key]
    if cache is not None and "cache" in run.report:
        cache.count_use(run.report["cache"])
    if "stopped" in run.report:
        raise LmmixupError(
            f"{run.report['stopped']}; the ratings made so far are saved in {output}: "
            "re-run to continue"
        )
    return counts


def make_knn_fn(library: ScorerLibrary, embedder, k: int):
    """Batch function: the kNN-Bayes score of each record (one embedding call per batch)."""

    def score(batch: list[dict]) -> list[dict]:
        vectors = embedder.encode([record_text(r) for r in batch], description="embed batch")
        out = [dict(r) for r in batch]
        tasks = [r.get("task_type") for r in batch]
        for task in set(tasks):
            rows = [i for i, t in enumerate(tasks) if t == task]
            scores = library.for_task(task).score(vectors[rows], k=k)
            for row, expected, mode in zip(rows, scores.expected, scores.mode, strict=True):
                out[row]["rating"] = {
                    "overall": None,
                    "score": int(round(float(expected))),
                    "expected_score": round(float(expected), 4),
                    "mode": int(mode),
                    "rarity": None,
                    "complexity": None,
                    "informativeness": None,
                    "rater": f"knn-bayes:{embedder.name}",
                    "method": "knn",
                }
        return out

    return score


class KnnStage(RecordStage):
    """The kNN-Bayes scorer as a per-record stage: records in, records with a kNN `rating`.

    Built from the rate config and the library folder (one saved scorer, or one per task
    type). With `leave_judged`, the records the judge's share (`cfg.propagate`) falls on are
    left as the judge left them: their output lines stand, failures included.
    """

    batch_size = 1024
    description = "rate (kNN-Bayes)"

    def __init__(self, cfg: RateConfig, library: Path, leave_judged: bool = False):
        self.cfg = cfg
        self.library = library
        self.leave_judged = leave_judged
        self._score: Callable[[list[dict]], list[dict]] | None = None

    def open(self) -> None:
        library = _load_library(self.library)
        self._score = make_knn_fn(
            library, load_embedder(self.cfg.embedder, self.cfg.embed_device), self.cfg.k
        )

    def process(self, batch: list[dict]) -> list[dict]:
        return self._score(batch)

    def is_done(self, record: dict) -> bool:
        if is_rated(record):
            return True
        return self.leave_judged and chosen_for_judge(
            record["id"], self.cfg.propagate, self.cfg.seed
        )

    def close(self) -> dict:
        self._score = None
        return {}


def score_with_library(
    pool: Path,
    output: Path,
    rejects: Path,
    library: Path,
    cfg: RateConfig,
    select=None,
    leave_judged: bool = False,
) -> dict:
    """Score the records (those `select` accepts) with the library in folder `library`."""
    return _run(KnnStage(cfg, library, leave_judged), pool, output, rejects, select).counts


def _judged(records: list[dict]) -> list[dict]:
    return [r for r in records if is_rated(r) and r["rating"]["method"].startswith("judge")]


def _too_few_judged(records: list[dict], judged: int, output: Path) -> str:
    """Why propagation cannot start: the judge failed (its first error), or too few were judged."""
    failures = [r.get("rating_error", "no rating") for r in records if not is_rated(r)]
    if failures:
        return (
            f"the judge failed on {len(failures)} of the {len(failures) + judged} samples chosen "
            f"for it (first error: {failures[0]}), so there is nothing to propagate from; "
            f"the failures are saved in {output}: re-run to retry them"
        )
    return f"propagation needs at least 2 judged samples, got {judged}; raise rate.propagate"


def fit_library(records: list[dict], cfg: RateConfig) -> tuple[KnnBayesScorer, np.ndarray]:
    """A kNN-Bayes scorer fitted on judged records; also returns their embeddings."""
    embedder = load_embedder(cfg.embedder, cfg.embed_device)
    vectors = embedder.encode([record_text(r) for r in records], description="embed judged")
    labels = np.array([r["rating"]["score"] for r in records], dtype=np.int64)
    scorer = KnnBayesScorer.fit(
        vectors, labels, k_transition=cfg.k_transition, embedder=cfg.embedder, search=cfg.search
    )
    return scorer, vectors


def agreement(judged: list[dict], vectors: np.ndarray, cfg: RateConfig) -> dict:
    """How well a scorer fitted on 80% of the judged records predicts the other 20%."""
    held = np.array([chosen_for_judge(r["id"], HELD_OUT_FRACTION, cfg.seed + 1) for r in judged])
    labels = np.array([r["rating"]["score"] for r in judged])
    if held.sum() < 2 or (~held).sum() < 2:
        return {"held_out": int(held.sum()), "note": "too few judged samples to measure agreement"}
    scorer = KnnBayesScorer.fit(vectors[~held], labels[~held], k_transition=cfg.k_transition)
    expected = scorer.expected(vectors[held], k=cfg.k)
    truth = labels[held]
    predicted = np.rint(expected)
    return {
        "held_out": int(held.sum()),
        "exact": round(float(np.mean(predicted == truth)), 4),
        "within_1": round(float(np.mean(np.abs(predicted - truth) <= 1)), 4),
        "mae": round(float(np.mean(np.abs(expected - truth))), 4),
        "high_low_agreement": round(float(np.mean((predicted >= 4) == (truth >= 4))), 4),
        "majority_class_baseline": round(
            float(np.mean(truth == np.bincount(labels[~held]).argmax())), 4
        ),
    }


def _for_judge(cfg: RateConfig) -> Callable[[dict], bool]:
    """Whether a record is one of the fraction `--propagate` gives to the judge."""
    return lambda record: chosen_for_judge(record["id"], cfg.propagate, cfg.seed)


def propagate(pool: Path, output: Path, rejects: Path, cfg: RateConfig, library_dir: Path) -> dict:
    """Fit a scorer on the judged fraction, measure agreement, score everything else.

    The judge's records stay as the judge left them, its failures included (the next run
    retries those); the scorer rates only the others.
    """
    records = read_records(output)
    judged = _judged(records)
    if len(judged) < 2:
        raise LmmixupError(_too_few_judged(records, len(judged), output))
    scorer, vectors = fit_library(judged, cfg)
    scorer.save(library_dir / "default")
    for_judge = _for_judge(cfg)
    counts = score_with_library(
        pool,
        output,
        rejects,
        library_dir,
        cfg,
        select=lambda r: not for_judge(r),
        leave_judged=True,
    )
    return {
        "propagated": counts,
        "agreement": agreement(judged, vectors, cfg),
        "library": str(library_dir),
    }


def curate(output: Path, cfg: RateConfig) -> dict:
    """Flag judged ratings their embedding neighbourhood contradicts; annotate the records."""
    from lmmixup.method.curation import flag_inconsistent

    records = read_records(output)
    judged_index = [
        i
        for i, r in enumerate(records)
        if is_rated(r) and r["rating"]["method"].startswith("judge")
    ]
    if len(judged_index) < 3:
        return {"note": "too few judged samples to curate"}
    scorer, _ = fit_library([records[i] for i in judged_index], cfg)
    result = flag_inconsistent(scorer, k=cfg.k)
    for i, flag, curated in zip(judged_index, result.flags, result.curated, strict=True):
        records[i]["rating"]["flagged"] = bool(flag)
        records[i]["rating"]["curated_score"] = int(curated)
    write_records(output, records)
    return result.summary


def rate_pool(
    pool: Path,
    output: Path,
    rejects: Path,
    cfg: RateConfig,
    cache: CallCache | None,
    work_dir: Path,
    run_index: int = 0,
) -> dict:
    """The whole rate stage for one pool file; returns counts for the manifest.

    `run_index` counts earlier runs of this stage: re-runs ask the judge again with new seeds.
    The pool is checked whole first, before any model loads.
    """
    check_file(pool, POOL_RECORD, allow_empty=True)
    counts: dict = {}
    if cfg.method == "knn":
        if not cfg.library:
            raise LmmixupError("rate.method=knn needs a library folder (--library)")
        counts["knn"] = score_with_library(pool, output, rejects, Path(cfg.library), cfg)
    else:
        select = None if cfg.propagate is None else _for_judge(cfg)
        counts["judge"] = judge_records(pool, output, rejects, cfg, cache, select, run_index)
        if cfg.propagate is not None:
            counts.update(propagate(pool, output, rejects, cfg, work_dir / LIBRARY_DIR))
    if cfg.curate:
        counts["curation"] = curate(output, cfg)
    records = read_records(output)
    counts["rated"] = sum(is_rated(r) for r in records)
    counts["failed"] = len(records) - counts["rated"]
    if counts["failed"]:
        counts["first_error"] = next(r.get("rating_error") for r in records if not is_rated(r))
    counts[TRUNCATED_KEY] = sum(TRUNCATED_KEY in r for r in records)
    counts["score_histogram"] = _histogram(records)
    if cache is not None:
        counts["cache"] = cache.stats()
    return counts


def _load_library(path: Path) -> ScorerLibrary:
    if (path / "meta.json").exists():
        return ScorerLibrary({"default": KnnBayesScorer.load(path)})
    return load_task_scorers(path)


def _histogram(records: list[dict]) -> dict[str, int]:
    scores = [r["rating"]["score"] for r in records if is_rated(r)]
    return {str(s): scores.count(s) for s in range(6)}


def keep_high(rated: Path, kept: Path, threshold: int) -> dict:
    """Keep the records whose effective (curated) score reaches the threshold; counts for the
    manifest."""
    records = read_records(rated)
    keep = [r for r in records if is_rated(r) and effective_score(r["rating"]) >= threshold]
    write_records(kept, keep)
    return {
        "kept": len(keep),
        "below_threshold": sum(is_rated(r) for r in records) - len(keep),
        "unrated": sum(not is_rated(r) for r in records),
        "threshold": threshold,
    }


def rate_into(stage: StageDir, pool: Path, cfg: RateConfig) -> dict:
    """Rate `pool` into the stage's rated.jsonl; a stage with failures stays partial."""
    counts = rate_pool(
        pool,
        stage.file("rated.jsonl"),
        stage.file("rejects.jsonl"),
        cfg,
        CallCache(),
        stage.path,
        stage.previous_runs,
    )
    stage.counts.update(counts)
    if counts["failed"]:
        note = rate_failures(counts)
        stage.partial = (
            note.line() if note else f"{counts['failed']} ratings failed; re-run to retry them"
        )
    return counts


def _run_rate(stage: StageDir, cfg: RunConfig, inputs: dict[str, Path]) -> None:
    rate_into(stage, inputs["pool"], cfg.rate)


def _run_rerate(stage: StageDir, cfg: RunConfig, inputs: dict[str, Path]) -> None:
    # Every distilled pair is judged (no propagation, no curation: too few to fit on).
    rate_cfg = cfg.rate.model_copy(update={"propagate": None, "curate": False, "method": "judge"})
    rate_into(stage, inputs["distilled"], rate_cfg)
    kept = keep_high(stage.file("rated.jsonl"), stage.file("kept.jsonl"), cfg.rerate.threshold)
    stage.counts["filter"] = kept


RATE = StageSpec(
    "rate",
    sections=("rate",),
    reads={"pool": "import.pool"},
    outputs={"rated": "rated.jsonl", "rejects": "rejects.jsonl"},
    run=_run_rate,
)
RERATE = StageSpec(
    "rerate",
    sections=("rate", "rerate"),
    reads={"distilled": "distill.distilled"},
    outputs={"rated": "rated.jsonl", "kept": "kept.jsonl", "rejects": "rejects.jsonl"},
    run=_run_rerate,
)
