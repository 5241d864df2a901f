"""The kNN-Bayes scorer against a brute-force reference of the SPEC formula, rewards, storage."""

import json
import math

import numpy as np
import pytest

from lmmixup.method.knn_bayes import (
    KnnBayesScorer,
    ScorerFormatError,
    ScorerLibrary,
    banded_reward,
    continuous_reward,
    load_task_scorers,
)

# --- brute-force reference, written straight from SPEC stage 2 ------------------------------


def _unit(x):
    x = np.asarray(x, dtype=np.float32).astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _nearest(library, vector, k, skip=None):
    """Indices of the k most cosine-similar library rows, leaving out row ``skip``."""
    order = np.argsort(-(library @ vector), kind="stable")
    return [int(i) for i in order if i != skip][:k]


def reference_fit(embeddings, labels, k_t, smoothing):
    library = _unit(embeddings)
    classes = sorted(set(int(v) for v in labels))
    where = {c: i for i, c in enumerate(classes)}
    counts = np.full((len(classes), len(classes)), smoothing)
    for b in range(len(labels)):
        for other in _nearest(library, library[b], k_t, skip=b):
            counts[where[labels[b]], where[labels[other]]] += 1
    prior = np.array([np.sum(labels == c) / len(labels) for c in classes])
    return classes, prior, counts / counts.sum(axis=1, keepdims=True)


def reference_posterior(embeddings, labels, queries, k, k_t=3, smoothing=0.01, skips=None):
    library = _unit(embeddings)
    classes, prior, transition = reference_fit(embeddings, labels, k_t, smoothing)
    rows = []
    for n, query in enumerate(_unit(queries)):
        skip = None if skips is None else skips[n]
        neighbours = _nearest(library, query, k, skip=skip)
        hist = [sum(1 for o in neighbours if labels[o] == c) for c in classes]
        logits = [
            math.log(prior[i])
            + sum(hist[j] * math.log(transition[i, j]) for j in range(len(classes)))
            for i in range(len(classes))
        ]
        top = max(logits)
        weights = [math.exp(v - top) for v in logits]
        rows.append([w / sum(weights) for w in weights])
    return np.array(rows), np.array(classes)


def random_library(seed, n_items, dim=8, duplicates=0):
    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(2, 7))
    present = rng.choice(6, size=n_classes, replace=False)
    embeddings = rng.standard_normal((n_items, dim))
    labels = rng.choice(present, size=n_items)
    if duplicates:
        copies = rng.choice(n_items, size=duplicates, replace=False)
        embeddings = np.vstack([embeddings, embeddings[copies]])
        labels = np.concatenate([labels, labels[copies]])
    queries = rng.standard_normal((25, dim))
    return embeddings, labels, queries


@pytest.mark.parametrize(
    ("seed", "n_items", "duplicates", "k"),
    [
        (0, 60, 0, 16),
        (1, 120, 10, 16),
        (2, 40, 5, 7),
        (3, 9, 2, 16),
        (4, 80, 20, 3),
        (5, 200, 0, 16),
    ],
)
def test_posterior_matches_brute_force(seed, n_items, duplicates, k):
    embeddings, labels, queries = random_library(seed, n_items, duplicates=duplicates)
    scorer = KnnBayesScorer.fit(embeddings, labels, k_transition=3, smoothing=0.01)
    expected_post, classes = reference_posterior(embeddings, labels, queries, k)
    _, prior, transition = reference_fit(embeddings, labels, 3, 0.01)

    np.testing.assert_array_equal(scorer.classes, classes)
    np.testing.assert_allclose(scorer.prior, prior, rtol=0, atol=1e-12)
    np.testing.assert_allclose(scorer.transition, transition, rtol=0, atol=1e-12)
    post = scorer.posterior(queries, k=k)
    np.testing.assert_allclose(post, expected_post, rtol=0, atol=1e-9)
    np.testing.assert_allclose(scorer.expected(queries, k=k), expected_post @ classes, atol=1e-9)
    np.testing.assert_array_equal(scorer.mode(queries, k=k), classes[expected_post.argmax(1)])


@pytest.mark.parametrize("seed", [6, 7])
def test_leave_one_out_matches_brute_force(seed):
    embeddings, labels, _ = random_library(seed, 70, duplicates=8)
    scorer = KnnBayesScorer.fit(embeddings, labels, k_transition=2)
    skips = list(range(len(labels)))
    expected_post, _ = reference_posterior(embeddings, labels, embeddings, 16, k_t=2, skips=skips)
    np.testing.assert_allclose(scorer.leave_one_out(16).posterior, expected_post, atol=1e-9)


def test_transition_excludes_self_by_index_not_by_similarity():
    e1, e2 = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    embeddings = np.array([e1, e1, e1, e2, e2])  # exact duplicates, some with other labels
    labels = np.array([0, 1, 1, 2, 2])
    scorer = KnnBayesScorer.fit(embeddings, labels, k_transition=2, smoothing=0.01)
    # each e1 item sees its two duplicates; each e2 item sees its duplicate plus one e1 item
    # (similarity 0), whose class depends on tie order: check the rows without ties exactly.
    counts = np.array([[0.01, 2.01, 0.01], [2.01, 2.01, 0.01]])
    np.testing.assert_allclose(
        scorer.transition[:2], counts / counts.sum(1, keepdims=True), atol=1e-12
    )
    np.testing.assert_allclose(scorer.transition.sum(axis=1), 1.0, atol=1e-12)
    assert scorer.transition[2, 2] == pytest.approx(2.01 / 4.03)


def test_smoothing_fills_unseen_transitions():
    embeddings = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]])
    scorer = KnnBayesScorer.fit(embeddings, [0, 0, 5, 5], k_transition=1, smoothing=0.5)
    np.testing.assert_allclose(scorer.transition, [[2.5 / 3, 0.5 / 3], [0.5 / 3, 2.5 / 3]])
    np.testing.assert_array_equal(scorer.classes, [0, 5])
    np.testing.assert_allclose(scorer.prior, [0.5, 0.5])


def test_library_smaller_than_k_uses_every_item():
    embeddings = np.eye(3)
    scorer = KnnBayesScorer.fit(embeddings, [1, 2, 2], k_transition=3)
    hist = scorer.histogram(np.ones((1, 3)), k=16)
    np.testing.assert_array_equal(hist, [[1, 2]])
    assert scorer.histogram(embeddings, k=16, exclude_self=np.arange(3)).sum(axis=1).tolist() == [
        2,
        2,
        2,
    ]


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError):
        KnnBayesScorer.fit(np.ones((3, 2)), [0, 1, 6])
    with pytest.raises(ValueError):
        KnnBayesScorer.fit(np.ones((3, 2)), [0, 1])
    with pytest.raises(ValueError):
        KnnBayesScorer.fit(np.array([[1.0, 0.0], [0.0, 0.0]]), [0, 1])
    with pytest.raises(ValueError):
        KnnBayesScorer.fit(np.ones((3, 2)), [0.5, 1, 2])
    with pytest.raises(ValueError):
        KnnBayesScorer.fit(np.ones((2, 2)), [0, 1], smoothing=0)


def test_ivf_search_agrees_with_exact_on_clustered_data():
    rng = np.random.default_rng(11)
    centres = rng.standard_normal((20, 32))
    which = rng.integers(0, 20, 3000)
    embeddings = centres[which] + 0.3 * rng.standard_normal((3000, 32))
    labels = which % 6
    queries = centres[rng.integers(0, 20, 300)] + 0.3 * rng.standard_normal((300, 32))
    exact = KnnBayesScorer.fit(embeddings, labels)
    ivf = KnnBayesScorer.fit(embeddings, labels, search="ivf", nprobe=8)
    assert np.mean(exact.mode(queries) == ivf.mode(queries)) > 0.95
    assert np.mean(np.abs(exact.expected(queries) - ivf.expected(queries))) < 0.05


def test_auto_search_is_exact_for_small_libraries_and_ivf_for_large_ones():
    from lmmixup.method.knn_bayes import AUTO_IVF_MIN_ITEMS, resolve_search

    assert resolve_search("auto", AUTO_IVF_MIN_ITEMS - 1) == "exact"
    assert resolve_search("auto", AUTO_IVF_MIN_ITEMS) == "ivf"
    assert resolve_search("exact", 10**6) == "exact"
    with pytest.raises(ValueError, match="auto"):
        resolve_search("hnsw", 10)
    small = KnnBayesScorer.fit(np.eye(4), [0, 1, 2, 3], search="auto")
    assert small.index.search_kind == "exact"  # what a saved library records


# --- rewards ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expected", "mode", "reward"),
    [
        (3.5, 4, 0.3),
        (2.9, 3, 0.3),
        (4.0, 4, 1.0),
        (4.6, 3, 1.0),
        (2.0, 2, 0.0),
        (3.0, 2, 0.3),
        (2.99, 5, 0.0),
    ],
)
def test_banded_reward(expected, mode, reward):
    assert banded_reward(expected, mode) == reward


def test_rewards_are_vectorised():
    expected = np.array([3.5, 2.9, 4.0, 2.0])
    np.testing.assert_array_equal(banded_reward(expected, np.array([4, 3, 4, 2])), [0.3, 0.3, 1, 0])
    np.testing.assert_allclose(continuous_reward(expected), expected / 5)


# --- storage -----------------------------------------------------------------------------------


@pytest.fixture
def fitted():
    embeddings, labels, queries = random_library(21, 90, dim=12, duplicates=4)
    return KnnBayesScorer.fit(embeddings, labels, embedder="unit-test"), queries


def test_save_load_roundtrip(tmp_path, fitted):
    scorer, queries = fitted
    scorer.save(tmp_path / "lib")
    loaded = KnnBayesScorer.load(tmp_path / "lib")
    np.testing.assert_array_equal(loaded.posterior(queries), scorer.posterior(queries))
    np.testing.assert_array_equal(loaded.transition, scorer.transition)
    assert loaded.embedder == "unit-test"
    assert sorted(p.name for p in (tmp_path / "lib").iterdir()) == [
        "embeddings.npy",
        "labels.npy",
        "meta.json",
    ]
    for name in ("embeddings.npy", "labels.npy"):
        assert np.load(tmp_path / "lib" / name, allow_pickle=False).dtype != object


@pytest.mark.parametrize("name", ["embeddings.npy", "labels.npy", "meta.json"])
def test_load_names_the_missing_file(tmp_path, fitted, name):
    fitted[0].save(tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises(ScorerFormatError, match=name):
        KnnBayesScorer.load(tmp_path)


def test_load_refuses_pickled_arrays(tmp_path, fitted):
    fitted[0].save(tmp_path)
    np.save(tmp_path / "labels.npy", np.array([{"x": 1}] * 94, dtype=object), allow_pickle=True)
    with pytest.raises(ScorerFormatError, match="labels.npy"):
        KnnBayesScorer.load(tmp_path)


@pytest.mark.parametrize(
    ("key", "value"),
    [("count", 5), ("classes", [0, 1]), ("transition", [[1.0]]), ("version", 99), ("prior", [1.0])],
)
def test_load_rejects_inconsistent_meta(tmp_path, fitted, key, value):
    fitted[0].save(tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta[key] = value
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ScorerFormatError):
        KnnBayesScorer.load(tmp_path)


def test_task_scorers_fall_back_to_default(tmp_path, fitted):
    scorer, queries = fitted
    other = KnnBayesScorer.fit(scorer.embeddings[:40], scorer.labels[:40])
    ScorerLibrary({"qa": other, "default": scorer}).save(tmp_path)
    library = load_task_scorers(tmp_path)
    assert sorted(library.scorers) == ["default", "qa"]
    np.testing.assert_array_equal(
        library.for_task("qa").posterior(queries), other.posterior(queries)
    )
    np.testing.assert_array_equal(library.for_task("mcq").labels, scorer.labels)
    np.testing.assert_array_equal(library.for_task(None).labels, scorer.labels)
    with pytest.raises(KeyError, match="default"):
        ScorerLibrary({"qa": other}).for_task("mcq")
