"""Tests for stage 5: long-tail scores, ranking, the budget mix and the baselines."""

from __future__ import annotations

import numpy as np
import pytest

from lmmixup.method.selection import (
    HIGH_SCORE,
    ShortfallError,
    ds2_like,
    full_pool,
    high_low_mix,
    high_only,
    label_filtered,
    long_tail_scores,
    low_only,
    minmax,
    mix_budget,
    parse_ratio,
    random_subset,
    rank_records,
    record_score,
)


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    X = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def _brute_long_tail(X: np.ndarray, k: int) -> np.ndarray:
    """Mean 1 - cos to the k most similar other rows, from the full matrix."""
    S = X.astype(np.float64) @ X.T.astype(np.float64)
    np.fill_diagonal(S, -np.inf)
    top = -np.sort(-S, axis=1)[:, :k]
    return (1 - top).mean(axis=1)


def _pool(n: int, seed: int = 0, prefix: str = "r", unrated: float = 0.0) -> list[dict]:
    """Records with random ratings (overall 1..10, score from the spec's compression)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        overall = int(rng.integers(1, 11))
        rating = {"overall": overall, "score": min(9, max(4, overall)) - 4}
        records.append(
            {
                "id": f"{prefix}{i:05d}",
                "prompt": f"q{i}",
                "completion": f"a{i}",
                "source": "test",
                "rating": None if rng.random() < unrated else rating,
            }
        )
    return records


def _ids(records) -> set[str]:
    return {r["id"] for r in records}


# ---------------------------------------------------------------------------------------
# long-tail scores


def test_long_tail_matches_brute_force():
    X = _unit(300, 16)
    np.testing.assert_allclose(long_tail_scores(X, k=15), _brute_long_tail(X, 15), atol=1e-5)


def test_long_tail_with_k_above_n_minus_one():
    X = _unit(6, 8, seed=1)
    np.testing.assert_allclose(long_tail_scores(X, k=15), _brute_long_tail(X, 5), atol=1e-5)


def test_long_tail_excludes_itself_among_duplicates():
    X = _unit(40, 8, seed=2)
    X[10:14] = X[3]  # five copies of one row
    np.testing.assert_allclose(long_tail_scores(X, k=3), _brute_long_tail(X, 3), atol=1e-5)
    assert long_tail_scores(X, k=3)[3] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("n", [0, 1])
def test_long_tail_of_tiny_sets_is_zero(n):
    assert long_tail_scores(_unit(1, 4)[:n]).tolist() == [0.0] * n


def test_long_tail_rejects_bad_k():
    with pytest.raises(ValueError):
        long_tail_scores(_unit(5, 4), k=0)


def test_minmax():
    np.testing.assert_allclose(minmax(np.array([2.0, 4.0, 3.0])), [0.0, 1.0, 0.5])
    assert minmax(np.full(4, 7.0)).tolist() == [0.0] * 4
    assert minmax(np.array([])).size == 0


# ---------------------------------------------------------------------------------------
# ranking and ratios


def test_rank_records_orders_by_score_then_long_tail_then_id():
    records = _pool(400, seed=3, unrated=0.1)
    long_tail = np.round(np.random.default_rng(3).random(400), 1)  # many ties
    ranked = [records[i] for i in rank_records(records, long_tail)]
    assert _ids(ranked) == _ids(records)
    keys = [
        (record_score(r) is None, -(record_score(r) or 0), -long_tail[int(r["id"][1:])], r["id"])
        for r in ranked
    ]
    assert all(a < b for a, b in zip(keys, keys[1:], strict=False))
    assert all(record_score(r) is None for r in ranked[-10:])


@pytest.mark.parametrize(
    ("value", "expected"), [("3:7", 0.3), ("5:5", 0.5), ("7:3", 0.7), (0.3, 0.3), ("0.7", 0.7)]
)
def test_parse_ratio(value, expected):
    assert parse_ratio(value) == pytest.approx(expected)


@pytest.mark.parametrize("value", ["1.5", -0.1, "0:0", "-1:2", "a:b"])
def test_parse_ratio_rejects_bad_values(value):
    with pytest.raises(ValueError):
        parse_ratio(value)


# ---------------------------------------------------------------------------------------
# mix_budget


def _mix(original, mixup, **kw):
    kw.setdefault("original_long_tail", np.random.default_rng(10).random(len(original)))
    kw.setdefault("mixup_long_tail", np.random.default_rng(11).random(len(mixup)))
    return mix_budget(original, mixup, **kw)


@pytest.mark.parametrize(("ratio", "n_mix"), [(0.3, 30), ("5:5", 50), ("7:3", 70)])
def test_mix_budget_exact_budget_and_ratio(ratio, n_mix):
    original, mixup = _pool(300, seed=4), _pool(150, seed=5, prefix="d")
    original_lt = np.random.default_rng(6).random(300)
    mixup_lt = np.random.default_rng(7).random(150)
    result = mix_budget(
        original,
        mixup,
        budget=100,
        mixup_ratio=ratio,
        original_long_tail=original_lt,
        mixup_long_tail=mixup_lt,
    )
    assert len(result.records) == 100
    distilled = [r for r in result.records if r["id"].startswith("d")]
    assert len(distilled) == n_mix
    assert _ids(distilled) == {mixup[i]["id"] for i in np.argsort(-mixup_lt)[:n_mix]}
    top_original = rank_records(original, original_lt)[: 100 - n_mix]
    assert _ids(result.records) - _ids(distilled) == {original[i]["id"] for i in top_original}
    assert [w["id"] for w in result.why] == [r["id"] for r in result.records]
    assert not any(w["filled_shortfall"] for w in result.why)
    assert result.summary["selected"] == {"distilled": n_mix, "original": 100 - n_mix}
    assert result.summary["short_by"] == 0


def test_mix_budget_is_seeded():
    original, mixup = _pool(80, seed=1), _pool(40, seed=2, prefix="d")
    first = _mix(original, mixup, budget=50, mixup_ratio=0.5, seed=42)
    again = _mix(original, mixup, budget=50, mixup_ratio=0.5, seed=42)
    other = _mix(original, mixup, budget=50, mixup_ratio=0.5, seed=7)
    assert [r["id"] for r in first.records] == [r["id"] for r in again.records]
    assert [r["id"] for r in first.records] != [r["id"] for r in other.records]
    assert _ids(first.records) == _ids(other.records)


def test_mix_budget_fills_a_distilled_shortfall_from_originals():
    original, mixup = _pool(100, seed=1), _pool(5, seed=2, prefix="d")
    original_lt = np.random.default_rng(3).random(100)
    result = _mix(original, mixup, budget=50, mixup_ratio=0.3, original_long_tail=original_lt)
    assert len(result.records) == 50
    assert result.summary["requested"] == {"distilled": 15, "original": 35}
    assert result.summary["selected"] == {"distilled": 5, "original": 45}
    assert result.summary["filled_shortfall"] == {"distilled": 0, "original": 10}
    filled = {w["id"] for w in result.why if w["filled_shortfall"]}
    ranked = rank_records(original, original_lt)
    assert filled == {original[i]["id"] for i in ranked[35:45]}
    assert any("distilled" in note for note in result.summary["notes"])


def test_mix_budget_fills_an_original_shortfall_from_distilled():
    original, mixup = _pool(10, seed=1), _pool(100, seed=2, prefix="d")
    result = _mix(original, mixup, budget=40, mixup_ratio="3:7")
    assert result.summary["selected"] == {"distilled": 30, "original": 10}
    assert sum(w["filled_shortfall"] for w in result.why) == 18


def test_mix_budget_refuses_to_return_short():
    original, mixup = _pool(10, seed=1), _pool(5, seed=2, prefix="d")
    with pytest.raises(
        ShortfallError, match=r"lower --budget \(select\.budget\) or pass --allow-short"
    ):
        _mix(original, mixup, budget=40, mixup_ratio=0.5)
    result = _mix(original, mixup, budget=40, mixup_ratio=0.5, allow_short=True)
    assert len(result.records) == 15
    assert result.summary["short_by"] == 25


def test_mix_budget_checks_long_tail_alignment():
    with pytest.raises(ValueError, match="mixup_long_tail"):
        _mix(_pool(5), _pool(5, prefix="d"), budget=4, mixup_ratio=0.5, mixup_long_tail=[0.1])


# ---------------------------------------------------------------------------------------
# baselines


def _high(records) -> list[dict]:
    return [r for r in records if r["rating"] and r["rating"]["score"] >= HIGH_SCORE]


def _low(records) -> list[dict]:
    return [r for r in records if r["rating"] and r["rating"]["score"] < HIGH_SCORE]


@pytest.mark.parametrize(
    "select",
    [
        lambda p, b: random_subset(p, budget=b),
        lambda p, b: high_only(p, budget=b),
        lambda p, b: low_only(p, budget=b),
        lambda p, b: high_low_mix(p, budget=b, high_ratio="7:3"),
        lambda p, b: label_filtered(p, budget=b),
        lambda p, b: ds2_like(p, budget=b, long_tail=np.linspace(0, 1, len(p))),
    ],
)
def test_baselines_return_exactly_the_budget(select):
    pool = _pool(1000, seed=8, unrated=0.05)
    result = select(pool, 120)
    assert len(result.records) == len(_ids(result.records)) == 120
    assert [w["id"] for w in result.why] == [r["id"] for r in result.records]
    assert _ids(result.records) <= _ids(pool)


def test_full_pool_ignores_the_budget():
    pool = _pool(77, seed=9)
    assert _ids(full_pool(pool).records) == _ids(pool)


def test_quality_bands():
    pool = _pool(600, seed=10, unrated=0.1)
    assert _ids(high_only(pool, budget=50).records) <= _ids(_high(pool))
    assert _ids(low_only(pool, budget=50).records) <= _ids(_low(pool))
    mixed = high_low_mix(pool, budget=100, high_ratio=0.7)
    assert len(_high(mixed.records)) == 70 and len(_low(mixed.records)) == 30


def test_quality_bands_from_the_split_high_part():
    # A weak judge: every record scores 2, so "score >= 4" finds no high band at all; the
    # split's top fraction (given as ids) defines the bands instead.
    pool = _pool(100, seed=14, unrated=0.1)
    for record in pool:
        if record["rating"] is not None:
            record["rating"]["score"] = 2
    with pytest.raises(ShortfallError):
        high_only(pool, budget=5)
    rated = [r for r in pool if r["rating"] is not None]
    high_ids = {r["id"] for r in rated[:20]} | {next(r["id"] for r in pool if not r["rating"])}
    high = high_only(pool, budget=20, high_ids=high_ids)
    assert _ids(high.records) == {r["id"] for r in rated[:20]}  # the unrated id is excluded
    low = low_only(pool, budget=len(rated) - 20, high_ids=high_ids)
    assert _ids(low.records) == {r["id"] for r in rated[20:]}
    mixed = high_low_mix(pool, budget=10, high_ratio="3:7", high_ids=high_ids)
    assert len(_ids(mixed.records) & high_ids) == 3
    assert mixed.summary["bands"] == "split's high part"


def test_high_only_never_borrows_low_records():
    pool = _pool(200, seed=11)
    with pytest.raises(ShortfallError):
        high_only(pool, budget=len(_high(pool)) + 1)


def test_high_low_mix_fills_a_short_band():
    pool = _pool(300, seed=12)
    n_high = len(_high(pool))
    result = high_low_mix(pool, budget=n_high + 20, high_ratio=0.9)
    assert len(result.records) == n_high + 20
    assert len(_high(result.records)) == n_high
    assert result.summary["filled_shortfall"]["low"] > 0


def test_label_filtered_reads_propagated_ratings_by_their_score():
    pool = _pool(40, seed=15)
    for record in pool:  # kNN-Bayes ratings carry the 0..5 score only
        record["rating"] = {"overall": None, "score": 1}
    pool[7]["rating"]["score"] = 5  # compresses from overall 9 or more: passes the filter
    result = label_filtered(pool, budget=3, seed=1)
    passed = [w["id"] for w in result.why if not w.get("filled_shortfall")]
    assert passed == [pool[7]["id"]] and len(result.records) == 3


def test_label_filtered_prefers_the_highest_tiers():
    pool = _pool(500, seed=13)
    passing = [r for r in pool if r["rating"]["overall"] >= 9]
    small = label_filtered(pool, budget=len(passing) // 2)
    assert all(r["rating"]["overall"] >= 9 for r in small.records)
    large = label_filtered(pool, budget=len(passing) + 30)
    assert _ids(passing) <= _ids(large.records)
    lowest_taken = min(r["rating"]["overall"] for r in large.records)
    left_out = [r for r in pool if r["id"] not in _ids(large.records)]
    assert lowest_taken >= max(r["rating"]["overall"] for r in left_out)
    assert sum(w["filled_shortfall"] for w in large.why) == 30


def test_ds2_like_takes_the_top_of_the_ranking():
    pool = _pool(300, seed=14)
    long_tail = np.random.default_rng(14).random(300)
    result = ds2_like(pool, budget=40, long_tail=long_tail)
    assert _ids(result.records) == {pool[i]["id"] for i in rank_records(pool, long_tail)[:40]}


def test_long_tail_embeds_a_record_set_once(monkeypatch):
    from lmmixup.config import SelectConfig
    from lmmixup.stages import select as select_stage

    class CountingEmbedder:
        calls = 0

        def encode(self, texts, description=""):
            CountingEmbedder.calls += 1
            return _unit(len(texts), 8, seed=len(texts))

    embedder = CountingEmbedder()
    monkeypatch.setattr(select_stage, "load_embedder", lambda *_: embedder)
    cfg = SelectConfig(long_tail_k=3)
    pool = _pool(30, seed=16)
    first = select_stage.long_tail(pool, cfg)
    first[:] = -1  # callers get their own copy
    again = select_stage.long_tail(pool, cfg)
    assert CountingEmbedder.calls == 1 and (again >= 0).all()
    select_stage.long_tail(pool[:20], cfg)  # another set is embedded
    assert CountingEmbedder.calls == 2


# ---------------------------------------------------------------------------------------
# the curated score, as split and re-rating use it


def _curated(pool: list[dict], every: int = 3) -> list[dict]:
    """Every `every`-th record's score corrected by curation: high <-> low."""
    for record in pool[::every]:
        rating = record["rating"]
        rating["curated_score"] = 0 if rating["score"] >= HIGH_SCORE else 5
    return pool


def test_selection_ranks_by_the_curated_score():
    from lmmixup.records import effective_score

    pool = _curated(_pool(300, seed=17))
    long_tail = np.random.default_rng(17).random(300)
    ranked = [pool[i] for i in rank_records(pool, long_tail)]
    scores = [effective_score(r["rating"]) for r in ranked]
    assert scores == sorted(scores, reverse=True)
    top = ds2_like(pool, budget=40, long_tail=long_tail)
    assert {w["score"] for w in top.why} == {5}
    assert all(effective_score(r["rating"]) == 5 for r in top.records)


def test_quality_bands_and_label_filter_follow_the_curated_score():
    pool = _curated(_pool(300, seed=18))
    demoted = {r["id"] for r in pool if r["rating"].get("curated_score") == 0}
    promoted = {r["id"] for r in pool if r["rating"].get("curated_score") == 5}
    high = high_only(pool, budget=20, seed=1)
    assert _ids(high.records).isdisjoint(demoted)
    low = low_only(pool, budget=len(pool) - 120, allow_short=True)
    assert _ids(low.records).isdisjoint(promoted)
    passed = label_filtered(pool, budget=len(pool), min_overall=9)
    chosen = {w["id"] for w in passed.why if not w["filled_shortfall"]}
    assert promoted <= chosen and chosen.isdisjoint(demoted)


def test_split_and_rerating_use_the_same_effective_score(tmp_path):
    from lmmixup.config import SplitConfig
    from lmmixup.io.jsonl import read_records, write_records
    from lmmixup.stages.rate import keep_high
    from lmmixup.stages.split import split_records

    pool = _curated(_pool(60, seed=19))
    high, low, _ = split_records(pool, SplitConfig(threshold=HIGH_SCORE))
    write_records(tmp_path / "rated.jsonl", pool)
    keep_high(tmp_path / "rated.jsonl", tmp_path / "kept.jsonl", HIGH_SCORE)
    kept = read_records(tmp_path / "kept.jsonl")
    selected = high_only(pool, budget=len(high))
    assert _ids(kept) == _ids(high) == _ids(selected.records)
    assert _ids(low).isdisjoint(_ids(kept))


def test_select_refuses_files_without_ratings(tmp_path):
    from lmmixup.config import SelectConfig
    from lmmixup.errors import LmmixupError
    from lmmixup.io.jsonl import write_records
    from lmmixup.stages.select import select_baseline, select_files

    pool = _pool(10, seed=20)
    write_records(tmp_path / "rated.jsonl", pool)
    write_records(
        tmp_path / "pool.jsonl", [{k: v for k, v in r.items() if k != "rating"} for r in pool]
    )
    failed = [{**r, "rating": None, "rating_error": "judge failed"} for r in pool]
    write_records(tmp_path / "failed.jsonl", failed)
    cfg = SelectConfig(budget=4)
    out = tmp_path / "train.jsonl"
    with pytest.raises(LmmixupError, match=r"pool\.jsonl:1: field 'rating' missing"):
        select_baseline("random", tmp_path / "pool.jsonl", out, cfg)
    with pytest.raises(LmmixupError, match=r"no row of .*failed\.jsonl has a rating"):
        select_baseline("random", tmp_path / "failed.jsonl", out, cfg)
    with pytest.raises(LmmixupError, match=r"pool\.jsonl:1: field 'rating' missing"):
        select_files(tmp_path / "rated.jsonl", tmp_path / "pool.jsonl", out, cfg)
    assert not out.exists()


# ---------------------------------------------------------------------------------------
# select.per_task: the budget per task type


def _typed(prefix: str, task: str | None, scores: list[int]) -> list[dict]:
    """Records of one task type with the given scores, ids in order."""
    return [
        {
            "id": f"{prefix}{i:03d}",
            "prompt": f"{prefix} q{i}",
            "completion": f"{prefix} a{i}",
            "source": "test",
            "rating": {"overall": score + 4, "score": score},
        }
        | ({} if task is None else {"task_type": task})
        for i, score in enumerate(scores)
    ]


def _by_task(original, mixup, budget, ratio, per_task=True, **kw):
    return mix_budget(
        original,
        mixup,
        budget=budget,
        mixup_ratio=ratio,
        original_long_tail=np.zeros(len(original)),
        mixup_long_tail=np.zeros(len(mixup)),
        per_task=per_task,
        **kw,
    )


def test_largest_remainder_sums_exactly_and_follows_the_shares():
    from lmmixup.method.task_mix import largest_remainder

    assert largest_remainder({"a": 1, "b": 1, "c": 1}, 10) == {"a": 4, "b": 3, "c": 3}
    assert largest_remainder({"qa": 7, "mcq": 2, "tfq": 1}, 9) == {"qa": 6, "mcq": 2, "tfq": 1}
    assert largest_remainder({"a": 0.1, "b": 0.2, "c": 0.7}, 10) == {"a": 1, "b": 2, "c": 7}
    rng = np.random.default_rng(0)
    for _ in range(200):
        weights = {f"t{i}": int(w) for i, w in enumerate(rng.integers(0, 50, size=5))}
        weights["t0"] += 1
        total = int(rng.integers(0, 300))
        split = largest_remainder(weights, total)
        assert sum(split.values()) == total
        scale = sum(weights.values())
        assert all(abs(split[k] - total * w / scale) < 1 for k, w in weights.items())


def test_task_quotas_give_a_short_task_s_places_to_the_others():
    from lmmixup.method.task_mix import task_quotas

    # mcq's share asks for 5 of 10, it has 2: its 3 places go to qa and tfq by their shares
    assert task_quotas({"qa": 3, "mcq": 5, "tfq": 2}, {"qa": 9, "mcq": 2, "tfq": 9}, 10) == {
        "qa": 5,
        "mcq": 2,
        "tfq": 3,
    }
    # fewer records than the total: every record is taken
    assert task_quotas({"qa": 1, "mcq": 1}, {"qa": 2, "mcq": 1}, 10) == {"qa": 2, "mcq": 1}


def test_per_task_keeps_each_task_s_share_at_the_exact_budget_and_ratio():
    # The judge likes qa: by rank alone the originals would be all qa.
    original = _typed("oq", "qa", [5] * 30) + _typed("om", "mcq", [1, 3, 2] * 5)
    mixup = _typed("mq", "qa", [4] * 6) + _typed("mm", "mcq", [4] * 6)
    plain = _by_task(original, mixup, 20, 0.3, per_task=False)
    assert {r.get("task_type") for r in plain.records if r["id"].startswith("o")} == {"qa"}

    chosen = _by_task(original, mixup, 20, 0.3)
    assert len(chosen.records) == 20
    origins = [w["origin"] for w in chosen.why]
    assert origins.count("distilled") == 6 and origins.count("original") == 14
    # shares of all candidates: qa 36/57, mcq 21/57 -> originals 14 = 9 qa + 5 mcq
    assert chosen.summary["task_counts"] == {"mcq": 21, "qa": 36}
    by_task = chosen.summary["by_task"]
    assert by_task["original"]["qa"]["selected"] == 9
    assert by_task["original"]["mcq"]["selected"] == 5
    assert by_task["distilled"]["qa"]["selected"] + by_task["distilled"]["mcq"]["selected"] == 6
    # within a task: its best by (score, long-tail, id)
    mcq = sorted(
        (w for w in chosen.why if w["origin"] == "original" and w["task_type"] == "mcq"),
        key=lambda w: w["task_rank"],
    )
    assert [w["score"] for w in mcq] == [3, 3, 3, 3, 3]
    assert [w["task_rank"] for w in mcq] == [1, 2, 3, 4, 5]
    assert chosen.summary["per_task"] is True and chosen.summary["notes"] == []


def test_per_task_notes_a_task_too_small_for_its_share():
    original = _typed("oq", "qa", [5] * 10) + _typed("om", "mcq", [5] * 10)
    mixup = _typed("mq", "qa", [4] * 10)  # no distilled mcq at all
    chosen = _by_task(original, mixup, 10, 0.4)
    distilled = chosen.summary["by_task"]["distilled"]
    assert distilled["mcq"] == {
        "share": 0.3333,
        "wanted": 1,
        "available": 0,
        "quota": 0,
        "selected": 0,
    }
    assert distilled["qa"]["selected"] == 4
    assert any(
        note.startswith("distilled: task type mcq") and "only 0 available" in note
        for note in chosen.summary["notes"]
    )
    assert [w["origin"] for w in chosen.why].count("distilled") == 4


def test_per_task_groups_records_without_a_task_type_and_keeps_every_side_short_rule():
    original = _typed("ou", None, [5] * 4) + _typed("om", "mcq", [5] * 4)
    mixup = _typed("mq", "qa", [4] * 1)
    chosen = _by_task(original, mixup, 8, 0.5)  # distilled wants 4, has 1: originals fill 3
    assert len(chosen.records) == 8
    assert chosen.summary["filled_shortfall"] == {"distilled": 0, "original": 3}
    assert {w["task_type"] for w in chosen.why} == {"untyped", "mcq", "qa"}
    with pytest.raises(ShortfallError):
        _by_task(original, mixup, 20, 0.5)


def test_per_task_off_leaves_the_selection_as_it_was():
    original, mixup = _pool(40, seed=30), _pool(10, seed=31, prefix="m")
    chosen = _by_task(original, mixup, 20, 0.3, per_task=False)
    assert "per_task" not in chosen.summary and "by_task" not in chosen.summary
    assert all(
        set(w) == {"id", "origin", "rank", "score", "long_tail", "filled_shortfall"}
        for w in chosen.why
    )


def test_new_options_at_their_default_keep_the_recorded_config_hash(tmp_path):
    """A run dir recorded before `per_task` / `rubric_by_task` existed is skipped, not refused;
    turning one on is a change the stage records."""
    from lmmixup.config import RateConfig, SelectConfig, result_config
    from lmmixup.errors import StageMismatchError
    from lmmixup.hashing import hash_value
    from lmmixup.runtime.runner import run_stage

    before = {"budget": 100, "mixup_ratio": 0.5, "long_tail_k": 15, "seed": 42}
    before["embedder"] = "bundled:minilm"
    assert result_config(SelectConfig()) == before
    assert hash_value(result_config(SelectConfig())) == (
        "c01a4fc329b5c2f5c40e2545862c8b9bc3a09887606274740f0d815228c89f1a"
    )
    assert hash_value(result_config(RateConfig())) == (
        "ccf0ff861dc5222daa3db4cd6deb702423fec792f5b4db732c72bf87387a1f49"
    )
    assert result_config(SelectConfig(per_task=True))["per_task"] is True
    assert result_config(RateConfig(rubric_by_task=True))["rubric_by_task"] is True

    def body(stage):
        stage.path.joinpath("out.txt").write_text("x")

    run_stage(tmp_path, "select", inputs=[], config={"select": before}, body=body)
    again = run_stage(
        tmp_path, "select", inputs=[], config={"select": result_config(SelectConfig())}, body=body
    )
    assert again.skipped
    with pytest.raises(StageMismatchError, match="per_task"):
        run_stage(
            tmp_path,
            "select",
            inputs=[],
            config={"select": result_config(SelectConfig(per_task=True))},
            body=body,
        )


def test_select_files_passes_per_task_through(tmp_path, monkeypatch):
    from lmmixup.config import SelectConfig
    from lmmixup.io.jsonl import read_records, write_records
    from lmmixup.stages import select as select_stage

    monkeypatch.setattr(select_stage, "long_tail", lambda records, cfg: np.zeros(len(records)))
    original = _typed("oq", "qa", [5] * 12) + _typed("om", "mcq", [2] * 12)
    write_records(tmp_path / "high.jsonl", original)
    write_records(tmp_path / "kept.jsonl", _typed("mq", "qa", [4] * 4))
    out = tmp_path / "train.jsonl"
    summary = select_stage.select_files(
        tmp_path / "high.jsonl",
        tmp_path / "kept.jsonl",
        out,
        SelectConfig(budget=10, mixup_ratio=0.3, per_task=True),
    )
    rows = read_records(out)
    # originals: 7 places, mcq is 12 of the 28 candidates -> 3 (by rank alone: 0)
    assert len(rows) == 10 and summary["by_task"]["original"]["mcq"]["selected"] == 3
    why = read_records(select_stage.why_path(out))
    assert all("task_type" in w and "task_rank" in w for w in why)
