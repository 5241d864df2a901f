"""The one kNN helper: exact cosine top-k, leave-one-out, ties and small bases."""

from __future__ import annotations

import numpy as np
import pytest

from lmmixup.method.knn import CosineIndex, cosine_top_k, drop_excluded, top_k_columns


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_matches_a_brute_force_search():
    rng = np.random.default_rng(0)
    base, queries = _unit(rng.normal(size=(300, 16))), _unit(rng.normal(size=(40, 16)))
    sims, ids = cosine_top_k(queries, base, 7)
    dense = queries.astype(np.float64) @ base.T.astype(np.float64)
    expected = np.argsort(-dense, axis=1, kind="stable")[:, :7]
    assert ids.dtype == np.int64 and sims.dtype == np.float32
    assert np.array_equal(ids, expected)
    assert np.allclose(sims, np.take_along_axis(dense, expected, axis=1), atol=1e-6)


def test_leave_one_out_equals_top_k_of_the_other_rows():
    """A self-search with exclude is what MIXTURE's nearest-neighbour pairing needs."""
    rng = np.random.default_rng(1)
    X = _unit(rng.normal(size=(120, 8)))
    sims, ids = cosine_top_k(X, X, 10, exclude=np.arange(len(X)))
    dense = X.astype(np.float64) @ X.T.astype(np.float64)
    np.fill_diagonal(dense, -np.inf)
    assert np.array_equal(ids, np.argsort(-dense, axis=1, kind="stable")[:, :10])
    assert (np.diff(sims, axis=1) <= 0).all()


def test_ties_are_deterministic_distinct_and_never_the_excluded_row():
    X = np.tile(_unit(np.ones((1, 4))), (50, 1))  # fifty identical rows: all similarities tie
    first = cosine_top_k(X, X, 5, exclude=np.arange(50))
    again = cosine_top_k(X, X, 5, exclude=np.arange(50))
    assert np.array_equal(first[1], again[1]) and np.array_equal(first[0], again[0])
    sims, ids = first
    assert ids.shape == (50, 5) and np.allclose(sims, 1.0)
    assert all(len(set(row)) == 5 for row in ids.tolist())
    assert not (ids == np.arange(50)[:, None]).any()


def test_an_exact_duplicate_of_the_excluded_row_still_counts():
    X = _unit(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    _, ids = cosine_top_k(X, X, 1, exclude=np.arange(3))
    assert ids[:2, 0].tolist() == [1, 0]


def test_k_larger_than_the_base_gives_fewer_columns():
    X = _unit(np.random.default_rng(2).normal(size=(4, 3)))
    assert cosine_top_k(X, X, 10)[1].shape == (4, 4)
    assert cosine_top_k(X, X, 10, exclude=np.arange(4))[1].shape == (4, 3)
    assert cosine_top_k(X[:1], X[:1], 3, exclude=np.zeros(1, dtype=np.int64))[1].shape == (1, 0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        cosine_top_k(X, X, 0)


def test_an_index_is_searched_like_the_function():
    rng = np.random.default_rng(3)
    base, queries = _unit(rng.normal(size=(60, 5))), _unit(rng.normal(size=(9, 5)))
    index = CosineIndex(base)
    assert len(index) == 60
    for got, want in zip(index.search(queries, 4), cosine_top_k(queries, base, 4), strict=True):
        assert np.array_equal(got, want)


def test_drop_excluded_drops_the_last_column_when_the_row_was_crowded_out():
    sims = np.array([[0.9, 0.8, 0.7], [1.0, 1.0, 1.0]], dtype=np.float32)
    ids = np.array([[4, 2, 7], [3, 5, 6]])
    kept_sims, kept_ids = drop_excluded(sims, ids, np.array([2, 9]))
    assert kept_ids.tolist() == [[4, 7], [3, 5]]
    assert np.allclose(kept_sims, [[0.9, 0.7], [1.0, 1.0]])
    with pytest.raises(ValueError, match="one id per query"):
        drop_excluded(sims, ids, np.array([1]))


def test_top_k_columns_of_a_dense_block():
    S = np.array([[0.1, 0.5, 0.3, 0.5], [0.4, 0.2, 0.0, 0.9]], dtype=np.float32)
    values, columns = top_k_columns(S, 2)
    assert np.allclose(values, [[0.5, 0.5], [0.9, 0.4]])
    assert sorted(columns[0].tolist()) == [1, 3] and columns[1].tolist() == [3, 0]
    assert top_k_columns(S, 10)[1].shape == (2, 4)
