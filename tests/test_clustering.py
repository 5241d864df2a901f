"""Tests for stage 3: drawn cluster sizes and capacity-constrained clustering."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmmixup.method import clustering
from lmmixup.method.clustering import (
    assign_to_centres,
    cluster_by_group,
    cluster_embeddings,
    cohesion,
    draw_cluster_sizes,
    spherical_kmeans,
)

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_clustering.py"


@functools.cache
def _bench():
    """The bench module, which holds the dense reference implementation."""
    spec = importlib.util.spec_from_file_location("bench_clustering", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    X = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def _blobs(n_blobs: int, per_blob: int, d: int, noise: float, seed: int = 0):
    """Unit vectors in tight groups around random directions, with their group ids."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((n_blobs, d))
    truth = np.repeat(np.arange(n_blobs), per_blob)
    X = means[truth] + noise * rng.standard_normal((len(truth), d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32), truth


def _reachable(n: int, lo: int, hi: int) -> bool:
    """Whether some number of clusters with sizes in [lo, hi] sums to n."""
    return any(k * lo <= n <= k * hi for k in range(1, n // lo + 1))


def _assert_partition(labels: np.ndarray, sizes: np.ndarray) -> None:
    assert labels.dtype.kind == "i"
    assert labels.min() >= 0 and labels.max() < len(sizes)
    assert np.array_equal(np.bincount(labels, minlength=len(sizes)), sizes)


# ---------------------------------------------------------------------------------------
# draw_cluster_sizes


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(0, 3000),
    lo=st.integers(1, 6),
    width=st.integers(0, 30),
    mean=st.floats(-5, 40),
    std=st.floats(0, 15),
    seed=st.integers(0, 2**32 - 1),
)
def test_sizes_sum_exactly_and_stay_in_bounds(n, lo, width, mean, std, seed):
    hi = lo + width
    kw = {"min_size": lo, "max_size": hi, "mean_size": mean, "std_size": std, "seed": seed}
    if 0 < n < lo:
        assert draw_cluster_sizes(n, **kw).tolist() == [n]
    elif n and not _reachable(n, lo, hi):
        with pytest.raises(ValueError, match="cannot be split"):
            draw_cluster_sizes(n, **kw)
    else:
        sizes = draw_cluster_sizes(n, **kw)
        assert int(sizes.sum()) == n
        assert sizes.size == 0 or (sizes.min() >= lo and sizes.max() <= hi)


def test_sizes_follow_the_normal_distribution():
    sizes = draw_cluster_sizes(200_000, mean_size=10, std_size=3, seed=1)
    assert abs(sizes.mean() - 10) < 0.1
    assert abs(sizes.std() - 3) < 0.1


def test_sizes_are_deterministic_per_seed():
    a = draw_cluster_sizes(5000, seed=7)
    assert np.array_equal(a, draw_cluster_sizes(5000, seed=7))
    assert not np.array_equal(a, draw_cluster_sizes(5000, seed=8))


@pytest.mark.parametrize(
    ("n", "kw", "expected"),
    [
        (0, {}, []),
        (1, {}, [1]),  # fewer samples than min_size: one undersized cluster, nothing lost
        (2, {}, [2]),
        (3, {}, [3]),
        (4, {"min_size": 5, "max_size": 9}, [4]),
    ],
)
def test_sizes_small_n(n, kw, expected):
    assert draw_cluster_sizes(n, **kw).tolist() == expected


def test_sizes_with_zero_std_are_all_the_mean_but_the_adjusted_one():
    sizes = draw_cluster_sizes(1003, mean_size=5, std_size=0, min_size=2, max_size=25)
    assert sizes.sum() == 1003
    assert np.count_nonzero(sizes != 5) <= 3


def test_sizes_unreachable_n_raises():
    with pytest.raises(ValueError, match="cannot be split"):
        draw_cluster_sizes(6, min_size=4, max_size=5)


@pytest.mark.parametrize(
    "kw",
    [{"min_size": 0}, {"min_size": 5, "max_size": 4}, {"std_size": -1.0}, {"std_size": np.nan}],
)
def test_sizes_reject_bad_parameters(kw):
    with pytest.raises(ValueError):
        draw_cluster_sizes(10, **kw)


def test_sizes_reject_negative_n():
    with pytest.raises(ValueError):
        draw_cluster_sizes(-1)


# ---------------------------------------------------------------------------------------
# cluster_embeddings


SIZE_KW = {"min_size": 2, "max_size": 9, "mean_size": 5.0, "std_size": 2.0}


def test_random_data_partition_matches_drawn_sizes():
    X = _unit(600, 24)
    labels = cluster_embeddings(X, seed=3, **SIZE_KW)
    _assert_partition(labels, draw_cluster_sizes(600, seed=3, **SIZE_KW))


def test_clustering_is_deterministic_and_seed_dependent():
    X = _unit(400, 16, seed=1)
    a = cluster_embeddings(X, seed=0, **SIZE_KW)
    assert np.array_equal(a, cluster_embeddings(X, seed=0, **SIZE_KW))
    assert not np.array_equal(a, cluster_embeddings(X, seed=1, **SIZE_KW))


def test_clustered_data_is_recovered():
    X, truth = _blobs(n_blobs=30, per_blob=6, d=32, noise=0.05)
    labels = cluster_embeddings(X, sizes=[6] * 30, seed=0)
    _assert_partition(labels, np.full(30, 6))
    # Purity: the share of points whose cluster's majority blob is their own blob.
    majority = {c: np.bincount(truth[labels == c]).argmax() for c in range(30)}
    purity = np.mean([majority[c] == t for c, t in zip(labels, truth, strict=True)])
    assert purity >= 0.9
    assert np.mean(cohesion(X, labels)) > 0.9


def test_given_sizes_are_used_and_checked():
    X = _unit(50, 8)
    sizes = [10, 3, 7, 30]
    _assert_partition(cluster_embeddings(X, sizes=sizes), np.array(sizes))
    with pytest.raises(ValueError, match="sum"):
        cluster_embeddings(X, sizes=[10, 10])
    with pytest.raises(ValueError, match=">= 1"):
        cluster_embeddings(X, sizes=[0, 50])


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_tiny_inputs_keep_every_point(n):
    labels = cluster_embeddings(_unit(3, 8)[:n])
    assert labels.tolist() == [0] * n  # under the default sizes, n <= 3 is one cluster


def test_one_point_per_cluster():
    X = _unit(30, 8)
    labels = cluster_embeddings(X, min_size=1, max_size=1, mean_size=1)
    assert sorted(labels.tolist()) == list(range(30))


def test_rejects_non_matrix_input():
    with pytest.raises(ValueError, match="2-D"):
        cluster_embeddings(np.zeros(5, dtype=np.float32))


def test_two_level_path_keeps_the_constraints_and_quality(monkeypatch):
    X, _ = _blobs(n_blobs=100, per_blob=30, d=32, noise=0.6, seed=2)
    kw = {"min_size": 2, "max_size": 5, "mean_size": 3.0, "std_size": 1.0, "seed": 0}
    sizes = draw_cluster_sizes(len(X), **kw)
    flat = cluster_embeddings(X, **kw)
    monkeypatch.setattr(clustering, "_FLAT_LIMIT", 0)
    two_level = cluster_embeddings(X, **kw)
    _assert_partition(two_level, sizes)
    assert np.array_equal(two_level, cluster_embeddings(X, **kw))
    assert np.mean(cohesion(X, two_level)) >= 0.95 * np.mean(cohesion(X, flat))


# ---------------------------------------------------------------------------------------
# assignment equals the dense reference


@pytest.fixture
def fallback_calls(monkeypatch):
    """Count the rows sent to the fallback search over open centres."""
    calls = []
    search = clustering._OpenCentres.search

    def spy(self, Q, room):
        calls.append(len(Q))
        return search(self, Q, room)

    monkeypatch.setattr(clustering._OpenCentres, "search", spy)
    return calls


@pytest.mark.parametrize("n_candidates", [1, 2, 5, 32])
def test_assignment_equals_dense_reference(n_candidates, fallback_calls):
    rng = np.random.default_rng(4)
    X = _unit(500, 12, seed=4)
    sizes = draw_cluster_sizes(500, min_size=1, max_size=12, mean_size=5, std_size=3, seed=4)
    centres = spherical_kmeans(X, len(sizes), seed=4)
    centres = centres[rng.permutation(len(centres))]  # decouple capacity from k-means order
    labels = assign_to_centres(X, centres, sizes, n_candidates=n_candidates)
    _assert_partition(labels, sizes)
    assert np.array_equal(labels, _bench().dense_greedy_reference(X, centres, sizes))
    if n_candidates <= 2:
        assert sum(fallback_calls) > 20  # the fallback path really ran


def test_assignment_checks_its_inputs():
    X = _unit(10, 4)
    with pytest.raises(ValueError, match="sizes for"):
        assign_to_centres(X, X[:3], [5, 5])
    with pytest.raises(ValueError, match="n_candidates"):
        assign_to_centres(X, X[:2], [5, 5], n_candidates=0)


# ---------------------------------------------------------------------------------------
# cohesion and per-group clustering


def test_cohesion_matches_brute_force():
    X = _unit(60, 10, seed=5)
    labels = np.random.default_rng(5).integers(0, 8, 60)
    labels[labels == 3] = 4  # label 3 unused
    expected = []
    for c in range(8):
        members = X[labels == c]
        if len(members) == 0:
            expected.append(np.nan)
            continue
        centre = members.sum(axis=0) / np.linalg.norm(members.sum(axis=0))
        expected.append(float(np.mean(members @ centre)))
    np.testing.assert_allclose(cohesion(X, labels), expected, rtol=1e-5)


def test_cluster_by_group_keeps_groups_apart():
    X = _unit(120, 8, seed=6)
    groups = np.array(["dolly"] * 70 + ["alpaca"] * 49 + ["lima"])
    labels = cluster_by_group(X, groups.tolist(), seed=0, **SIZE_KW)
    assert labels.shape == (120,)
    assert sorted(set(labels.tolist())) == list(range(labels.max() + 1))
    for c in range(labels.max() + 1):
        assert len(set(groups[labels == c])) == 1
    for name in ("dolly", "alpaca"):
        rows = groups == name
        _assert_partition(
            np.unique(labels[rows], return_inverse=True)[1],
            draw_cluster_sizes(int(rows.sum()), seed=0, **SIZE_KW),
        )
    assert np.count_nonzero(labels == labels[-1]) == 1  # the lone "lima" sample


def test_cluster_by_group_rejects_sizes():
    with pytest.raises(TypeError):
        cluster_by_group(_unit(4, 2), ["a"] * 4, sizes=[4])


def test_cluster_by_group_names_the_group_it_cannot_split():
    with pytest.raises(ValueError, match="'b'"):
        cluster_by_group(_unit(16, 4), ["a"] * 10 + ["b"] * 6, min_size=4, max_size=5)


# ---------------------------------------------------------------------------------------
# the cluster stage


class _FakeEmbedder:
    """Unit vectors from the text's length (enough to cluster), without a model."""

    def encode(self, texts, description=""):
        return _unit(len(texts), 8, seed=len(texts))


def _records(counts: dict[str, int]) -> list[dict]:
    return [
        {"id": f"{source}{i}", "prompt": f"q{i}", "completion": f"a{i}", "source": source}
        for source, count in counts.items()
        for i in range(count)
    ]


def test_cluster_file_accounts_for_groups_below_min_size(tmp_path, monkeypatch):
    from lmmixup.config import ClusterConfig
    from lmmixup.io.jsonl import read_records, write_records
    from lmmixup.stages.cluster import cluster_file

    monkeypatch.setattr("lmmixup.stages.cluster.load_embedder", lambda *_: _FakeEmbedder())
    records = _records({"big": 20, "lone": 1, "pair": 2})
    write_records(tmp_path / "low.jsonl", records)
    cfg = ClusterConfig(min_size=3, max_size=5, mean_size=4, std_size=1, per_source=True)
    counts = cluster_file(tmp_path / "low.jsonl", tmp_path / "clusters.jsonl", cfg)
    clusters = read_records(tmp_path / "clusters.jsonl")
    members = [member for c in clusters for member in c["member_ids"]]
    assert sorted(members) == sorted(r["id"] for r in records)  # each id in one cluster
    small = [c for c in clusters if c["size"] < cfg.min_size]
    assert sorted(c["source"] for c in small) == ["lone", "pair"]
    assert counts["below_min_size"] == {"clusters": 2, "records": 3}


def test_cluster_sizes_that_cannot_be_met_are_an_error_naming_the_group(tmp_path):
    from lmmixup.config import ClusterConfig
    from lmmixup.errors import LmmixupError
    from lmmixup.stages.cluster import cluster_records

    records = _records({"a": 10, "b": 6})
    cfg = ClusterConfig(min_size=4, max_size=5, per_source=True)
    with pytest.raises(LmmixupError, match="group 'b'.*widen the size range"):
        cluster_records(records, _unit(16, 4), cfg)


def test_cluster_command_notes_clusters_below_min_size(tmp_path, monkeypatch, capsys):
    from lmmixup.cli.app import main
    from lmmixup.io.jsonl import write_records

    monkeypatch.setattr("lmmixup.stages.cluster.load_embedder", lambda *_: _FakeEmbedder())
    write_records(tmp_path / "low.jsonl", _records({"big": 20, "lone": 1, "pair": 2}))
    monkeypatch.chdir(tmp_path)
    sizes = ["--min-size", "3", "--max-size", "5", "--mean-size", "4", "--std-size", "1"]
    monkeypatch.setattr(
        sys, "argv", ["lmmixup", "cluster", "low.jsonl", "-o", "c.jsonl", "--per-source", *sizes]
    )
    main()
    out = capsys.readouterr().out
    assert "note: 2 cluster(s) holding 3 record(s) are smaller than min_size 3" in out
    # random 8-d vectors make loose clusters: the ones of 3 or more are below the floor
    assert "are below min_cohesion 0.95 (coherent: false): distill skips them" in out
    assert "near-duplicate" not in out


# ---------------------------------------------------------------------------------------
# greedy k-means++ seeding


def _plain_kmeanspp(X: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Non-greedy k-means++ (one candidate per seed), the baseline greedy seeding must beat."""
    seeds = [int(rng.integers(len(X)))]
    nearest = X @ X[seeds[0]]
    for _ in range(1, k):
        weight = np.maximum(1.0 - nearest.astype(np.float64), 0.0)
        weight[seeds] = 0.0
        seeds.append(int(rng.choice(len(X), p=weight / weight.sum())))
        nearest = np.maximum(nearest, X @ X[seeds[-1]])
    return np.array(seeds)


def _potential(X: np.ndarray, seeds: np.ndarray) -> float:
    """Total distance (1 - cos) of the rows to their nearest seed."""
    return float(np.sum(1.0 - (X @ X[seeds].T).max(axis=1)))


def _blobs_with_outliers(seed: int = 0) -> np.ndarray:
    """Tight blobs of unequal sizes plus scattered outliers: plain k-means++ wastes seeds on
    outliers, greedy k-means++ mostly does not."""
    rng = np.random.default_rng(seed)
    X, _ = _blobs(n_blobs=20, per_blob=15, d=16, noise=0.15, seed=seed)
    outliers = rng.standard_normal((60, 16))
    X = np.concatenate([X, outliers / np.linalg.norm(outliers, axis=1, keepdims=True)])
    return X.astype(np.float32)


@pytest.mark.parametrize("greedy", [False, True])
@pytest.mark.parametrize("k", [7, 40, 300])  # one seed per round, and rounds of several
def test_seeds_are_distinct_and_deterministic(k, greedy):
    X = _unit(400, 12, seed=9)
    a = clustering._seed_centres(X, k, np.random.default_rng(3), greedy=greedy)
    assert len(set(a.tolist())) == k
    assert np.array_equal(
        a, clustering._seed_centres(X, k, np.random.default_rng(3), greedy=greedy)
    )
    assert not np.array_equal(
        a, clustering._seed_centres(X, k, np.random.default_rng(4), greedy=greedy)
    )


@pytest.mark.parametrize("greedy", [False, True])
def test_seeds_handle_duplicated_points(greedy):
    X = np.repeat(_unit(5, 6, seed=1), 8, axis=0)  # 40 rows, 5 distinct
    seeds = clustering._seed_centres(X, 12, np.random.default_rng(0), greedy=greedy)
    assert len(set(seeds.tolist())) == 12
    assert len({tuple(X[s]) for s in seeds}) == 5  # every distinct point is a seed


def test_plain_seeds_are_textbook_kmeanspp_when_k_is_small():
    X = _blobs_with_outliers()
    for s in range(3):
        ours = clustering._seed_centres(X, 20, np.random.default_rng(s))
        assert np.array_equal(ours, _plain_kmeanspp(X, 20, np.random.default_rng(s)))


def test_greedy_seeds_leave_a_lower_potential_than_plain_ones():
    X = _blobs_with_outliers()

    def potential(greedy: bool) -> float:
        return np.mean(
            [
                _potential(
                    X, clustering._seed_centres(X, 20, np.random.default_rng(s), greedy=greedy)
                )
                for s in range(8)
            ]
        )

    assert potential(True) < 0.9 * potential(False)


def test_greedy_seeding_gives_clusters_at_least_as_cohesive_where_it_shows():
    X = _blobs_with_outliers(seed=1)
    sizes = [15] * 20 + [2] * 30

    def mean_cohesion(greedy: bool) -> float:
        runs = [cluster_embeddings(X, sizes=sizes, seed=s, greedy_seeding=greedy) for s in range(5)]
        return float(np.mean([np.mean(cohesion(X, labels)) for labels in runs]))

    assert mean_cohesion(True) >= mean_cohesion(False)


def test_greedy_seeding_reaches_both_clustering_paths(monkeypatch):
    X = _unit(300, 8, seed=2)
    calls = []
    seed_centres = clustering._seed_centres
    monkeypatch.setattr(
        clustering,
        "_seed_centres",
        lambda *a, greedy=False: calls.append(greedy) or seed_centres(*a, greedy=greedy),
    )
    labels = cluster_embeddings(X, seed=0, greedy_seeding=True, **SIZE_KW)
    monkeypatch.setattr(clustering, "_FLAT_LIMIT", 0)
    two_level = cluster_embeddings(X, seed=0, greedy_seeding=True, **SIZE_KW)
    assert calls and all(calls)
    _assert_partition(labels, np.bincount(labels))
    _assert_partition(two_level, np.bincount(two_level))


# ---------------------------------------------------------------------------------------
# near-duplicates and the cohesion floor in the cluster stage


def _near(v: np.ndarray, cos: float, seed: int) -> np.ndarray:
    """A unit vector at cosine `cos` from unit `v`."""
    w = np.random.default_rng(seed).standard_normal(v.shape)
    w -= (w @ v) * v
    w /= np.linalg.norm(w)
    return (cos * v + np.sqrt(1 - cos**2) * w).astype(np.float32)


def test_near_duplicates_keep_the_first_and_name_it():
    from lmmixup.stages.cluster import near_duplicate_of

    def at(angle: float) -> np.ndarray:  # unit vectors in one plane of 8-d space
        return np.array([np.cos(angle), np.sin(angle), 0, 0, 0, 0, 0, 0], dtype=np.float32)

    step = np.arccos(0.95)  # neighbours one step apart have cosine 0.95, two steps 0.805
    X = np.stack([at(0), at(step), np.eye(8, dtype=np.float32)[5], at(0), at(2 * step)])
    of = near_duplicate_of(X, 0.92)
    # 1 duplicates 0; 2 is unrelated; 3 is an exact copy of 0; 4 is close only to 1, which was
    # set aside, so nothing kept is within the threshold and 4 is kept.
    assert of == [None, 0, None, 0, None]
    assert near_duplicate_of(X, 0.8) == [None, 0, None, 0, 0]
    assert near_duplicate_of(X[[0, 1, 2, 4]], 1.0) == [None] * 4
    assert near_duplicate_of(X[:0], 0.9) == []


def test_near_duplicates_in_a_group_larger_than_one_search():
    from lmmixup.stages.cluster import near_duplicate_of

    rng = np.random.default_rng(0)
    centre = _unit(1, 64, seed=3)[0]
    group = np.stack([_near(centre, 0.99, s) for s in range(40)])  # all pairs >= 0.96
    X = np.concatenate([_unit(30, 64, seed=4), group])[rng.permutation(70)]
    of = near_duplicate_of(X, 0.95)
    members = [i for i in range(70) if X[i] @ centre > 0.98]
    assert of[members[0]] is None
    assert all(of[i] is not None and of[i] == members[0] for i in members[1:])
    assert all(of[i] is None for i in range(70) if i not in members)


class _TableEmbedder:
    """Vectors looked up by the record's prompt."""

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table

    def encode(self, texts, description=""):
        return np.stack([self.table[t.split("\n")[0]] for t in texts])


def test_cluster_file_sets_near_duplicates_aside_and_marks_incoherent_clusters(
    tmp_path, monkeypatch
):
    from lmmixup.config import ClusterConfig
    from lmmixup.io.jsonl import read_records, write_records
    from lmmixup.stages.cluster import cluster_file

    X, _ = _blobs(n_blobs=3, per_blob=4, d=32, noise=0.3, seed=5)
    loose = _unit(6, 32, seed=6)  # unrelated records: they can only form loose clusters
    dups = np.stack([_near(X[0], 0.995, 1), _near(X[5], 0.995, 2)])
    vectors = np.concatenate([X, loose, dups]).astype(np.float32)
    records = [
        {"id": f"r{i}", "prompt": f"q{i}", "completion": "a", "source": "s"}
        for i in range(len(vectors))
    ]
    table = {f"q{i}": v for i, v in enumerate(vectors)}
    monkeypatch.setattr("lmmixup.stages.cluster.load_embedder", lambda *_: _TableEmbedder(table))
    write_records(tmp_path / "low.jsonl", records)
    cfg = ClusterConfig(
        min_size=2, max_size=4, mean_size=3, std_size=1, min_cohesion=0.9, dedup_threshold=0.99
    )
    counts = cluster_file(tmp_path / "low.jsonl", tmp_path / "c.jsonl", cfg)
    clusters = read_records(tmp_path / "c.jsonl")
    rejects = read_records(tmp_path / "c.rejects.jsonl")
    assert [(r["id"], r["reason"], r["duplicate_of"]) for r in rejects] == [
        ("r18", "near_duplicate", "r0"),
        ("r19", "near_duplicate", "r5"),
    ]
    assert all(r["similarity"] >= 0.99 and r["prompt"] for r in rejects)
    clustered = [m for c in clusters for m in c["member_ids"]]
    assert sorted(clustered + [r["id"] for r in rejects]) == sorted(r["id"] for r in records)
    for c in clusters:
        assert c["coherent"] is (c["cohesion"] >= 0.9)
    blob_of = {f"r{i}": i // 4 for i in range(12)}  # r12..r17 are the unrelated records
    for c in clusters:
        one_blob = len({blob_of.get(m, m) for m in c["member_ids"]}) == 1
        assert c["coherent"] is one_blob, c
    incoherent = [c for c in clusters if not c["coherent"]]
    assert incoherent
    assert counts["near_duplicates"] == 2
    assert counts["reject_reasons"] == {"near_duplicate": 2}
    assert counts["incoherent_clusters"] == len(incoherent)
    assert counts["incoherent_members"] == sum(c["size"] for c in incoherent)

    # dedup off, floor 0: nothing set aside, every cluster coherent
    off = ClusterConfig(min_size=2, max_size=4, mean_size=3, std_size=1, min_cohesion=0)
    counts = cluster_file(tmp_path / "low.jsonl", tmp_path / "c.jsonl", off)
    assert counts["near_duplicates"] == 0 and counts["incoherent_clusters"] == 0
    assert read_records(tmp_path / "c.rejects.jsonl") == []
    assert all(c["coherent"] for c in read_records(tmp_path / "c.jsonl"))


def test_cluster_stage_declares_its_rejects_file():
    from lmmixup.stages.cluster import CLUSTER

    assert CLUSTER.outputs == {"clusters": "clusters.jsonl", "rejects": "rejects.jsonl"}


def test_a_cluster_at_the_floor_is_coherent():
    from lmmixup.config import ClusterConfig
    from lmmixup.stages.cluster import cluster_records

    v = _unit(2, 8, seed=8)
    vectors = np.stack([v[0], v[0], v[1], _near(v[1], 0.5, 3)])  # cohesion 1.0 and ~0.866
    cfg = ClusterConfig(min_size=2, max_size=2, mean_size=2, std_size=0, min_cohesion=1.0)
    clusters = cluster_records(_records({"s": 4}), vectors, cfg)
    assert sorted((c["cohesion"], c["coherent"]) for c in clusters) == [(0.866, False), (1.0, True)]
