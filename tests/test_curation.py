"""Score curation flags ratings their neighbourhood contradicts."""

import json

import numpy as np
import pytest

from lmmixup.method.curation import flag_inconsistent
from lmmixup.method.knn_bayes import KnnBayesScorer


def clustered_library(seed=0, per_cluster=40, dim=16):
    """Six tight clusters, cluster c rated c."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((6, dim)) * 3
    labels = np.repeat(np.arange(6), per_cluster)
    embeddings = centres[labels] + 0.3 * rng.standard_normal((len(labels), dim))
    return embeddings, labels


def test_clean_library_has_no_flags():
    embeddings, labels = clustered_library()
    result = flag_inconsistent(KnnBayesScorer.fit(embeddings, labels))
    assert not result.flags.any()
    np.testing.assert_array_equal(result.curated, labels)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_mislabel_is_flagged_and_corrected(seed):
    embeddings, labels = clustered_library(seed)
    planted = 5 * 40 + 7  # an item of the score-5 cluster
    labels = labels.copy()
    labels[planted] = 0
    result = flag_inconsistent(KnnBayesScorer.fit(embeddings, labels), k=16)
    assert np.flatnonzero(result.flags).tolist() == [planted]
    assert result.curated[planted] == 5
    assert result.own_prob[planted] < 0.05
    expected = labels.copy()
    expected[planted] = 5
    np.testing.assert_array_equal(result.curated, expected)


def test_summary_is_json_ready_and_counts():
    embeddings, labels = clustered_library(3)
    labels = labels.copy()
    labels[[10, 130]] = [4, 1]  # score-0 item rated 4, score-3 item rated 1
    result = flag_inconsistent(KnnBayesScorer.fit(embeddings, labels))
    summary = json.loads(json.dumps(result.summary))
    assert summary["n_items"] == 240
    assert summary["n_flagged"] == 2
    assert summary["class_counts"] == {"0": 39, "1": 41, "2": 40, "3": 39, "4": 41, "5": 40}
    assert summary["flagged_by_class"]["4"] == 1 and summary["flagged_by_class"]["1"] == 1
    assert np.allclose(np.sum(summary["transition"], axis=1), 1.0)


def test_threshold_is_validated():
    embeddings, labels = clustered_library()
    with pytest.raises(ValueError):
        flag_inconsistent(KnnBayesScorer.fit(embeddings, labels), min_own_prob=1.5)
