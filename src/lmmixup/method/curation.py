"""Score curation in the spirit of DS2: find ratings their neighbourhood contradicts.

Rule: each rated library item is scored leave-one-out (its k nearest OTHER library items vote
through the fitted transition matrix). The item is flagged when that posterior gives its own
rating a probability below ``min_own_prob``; its suggested curated score is then the posterior
mode (otherwise its own rating is kept). With ``min_own_prob`` below 1/C a flagged item's mode
always differs from its rating. The transition matrix is the one fitted on all items, the
suspect ones included: with few suspects their weight in it is small.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmmixup.method.knn_bayes import KnnBayesScorer


@dataclass(frozen=True)
class CurationResult:
    """Per library item: ``flags`` (bool), ``curated`` score, ``own_prob``; plus a summary."""

    flags: np.ndarray
    curated: np.ndarray
    own_prob: np.ndarray
    summary: dict


def _summary(scorer: KnnBayesScorer, flags: np.ndarray, k: int, min_own_prob: float) -> dict:
    """Transition matrix, class counts and flag counts, as plain JSON-ready values."""
    classes = scorer.classes.tolist()
    counts = np.bincount(np.searchsorted(scorer.classes, scorer.labels), minlength=len(classes))
    flagged = np.bincount(
        np.searchsorted(scorer.classes, scorer.labels[flags]), minlength=len(classes)
    )
    return {
        "classes": classes,
        "class_counts": dict(zip(classes, counts.tolist(), strict=True)),
        "transition": scorer.transition.tolist(),
        "n_items": int(len(scorer.labels)),
        "n_flagged": int(flags.sum()),
        "flagged_by_class": dict(zip(classes, flagged.tolist(), strict=True)),
        "k": k,
        "min_own_prob": min_own_prob,
    }


def flag_inconsistent(
    scorer: KnnBayesScorer, k: int = 16, min_own_prob: float = 0.05
) -> CurationResult:
    """Flag the library's ratings that their neighbourhood contradicts (see module docstring).

    Takes a fitted scorer (``KnnBayesScorer.fit(embeddings, scores)``) whose library is the
    rated set to curate.
    """
    if not 0 < min_own_prob < 1:
        raise ValueError(f"min_own_prob must be in (0, 1), got {min_own_prob}")
    scores = scorer.leave_one_out(k)
    own = np.searchsorted(scorer.classes, scorer.labels)
    own_prob = scores.posterior[np.arange(len(own)), own]
    flags = own_prob < min_own_prob
    curated = np.where(flags, scores.mode, scorer.labels)
    return CurationResult(flags, curated, own_prob, _summary(scorer, flags, k, min_own_prob))
