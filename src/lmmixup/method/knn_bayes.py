"""The kNN-Bayes quality scorer (SPEC stage 2): a cheap rater and the GRPO quality reward.

A library of rated samples (unit embeddings, scores 0..5) gives a class prior and a
score-transition matrix T (how often an item of class i has neighbours of class j). A new
sample's k nearest library items vote through T: ``log post_i = log p_i + sum_j h_j log T_ij``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lmmixup.method.knn import CosineIndex, drop_excluded

SCORE_MIN, SCORE_MAX = 0, 5
FORMAT_VERSION = 1
SEARCH_KINDS = ("exact", "ivf")
# `auto` searches exactly below this many library items and with IVF from it on: exact
# scoring of 100K queries against 50K items takes ~31 s on 2 cores, IVF 5.7 s (BENCHMARKS.md).
AUTO_IVF_MIN_ITEMS = 20_000


def resolve_search(search: str, library_size: int) -> str:
    """`exact` or `ivf` for a library of this size (`auto` picks by size)."""
    if search == "auto":
        return "ivf" if library_size >= AUTO_IVF_MIN_ITEMS else "exact"
    if search not in SEARCH_KINDS:
        raise ValueError(f"search must be auto or one of {SEARCH_KINDS}, got {search!r}")
    return search


DEFAULT_TASK = "default"
EMBEDDINGS_FILE, LABELS_FILE, META_FILE = "embeddings.npy", "labels.npy", "meta.json"
_QUERY_BATCH = 16384
_IVF_MIN_POINTS_PER_LIST = 39  # below this faiss's k-means warns and centres get poor


class ScorerFormatError(ValueError):
    """A saved scorer folder is missing something or is inconsistent."""


class KnnBayesScores(NamedTuple):
    """Posterior (n, C), expected score E (n,) and posterior mode (n,) of a batch."""

    posterior: np.ndarray
    expected: np.ndarray
    mode: np.ndarray


def _unit_rows(embeddings: np.ndarray, dim: int | None = None) -> np.ndarray:
    """Float32, C-contiguous, L2-normalised copy of a (n, d) array; rejects zero/non-finite rows."""
    array = np.asarray(embeddings, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (n, d), got shape {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"embeddings have dimension {array.shape[1]}, the library has {dim}")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise ValueError("embeddings must be finite and non-zero to be normalised")
    return np.ascontiguousarray(array / norms)


def _check_labels(scores: np.ndarray, count: int) -> np.ndarray:
    """The scores as an int64 vector of ``count`` values in 0..5."""
    array = np.asarray(scores)
    if array.shape != (count,):
        raise ValueError(f"scores must have shape ({count},), got {array.shape}")
    integral = array.dtype.kind in "iu" or (
        array.dtype.kind == "f" and bool(np.all(array == np.round(array)))
    )
    if not integral:
        raise ValueError("scores must be integers")
    labels = array.astype(np.int64)
    if count and (labels.min() < SCORE_MIN or labels.max() > SCORE_MAX):
        raise ValueError(f"scores must lie in {SCORE_MIN}..{SCORE_MAX}")
    return labels


class NeighbourIndex:
    """Cosine k-NN over a library of unit rows: exact (:class:`lmmixup.method.knn.CosineIndex`)
    or IVF-Flat.

    ``ivf`` is approximate (it scans ``nprobe`` of about 4*sqrt(N) lists) and several times
    faster on large libraries; ``exact`` follows the SPEC to the letter; ``auto`` picks by
    library size (`resolve_search`).
    """

    def __init__(self, embeddings: np.ndarray, search: str = "exact", nprobe: int = 16):
        count = embeddings.shape[0]
        self.embeddings = embeddings
        self.search_kind = resolve_search(search, count)
        self.nprobe = nprobe
        if self.search_kind == "exact":
            self._exact = CosineIndex(embeddings)
        else:
            # the IVF index does not keep its quantizer alive: hold both
            self._ivf, self._quantizer = _ivf_index(embeddings, nprobe)

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def search(self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
        """Library ids of each query's k nearest items, best first; -1 pads missing slots.

        ``exclude`` gives, per query, its own library row to leave out (leave-one-out):
        searched by index, so an exact duplicate of the item still counts as a neighbour.
        Fewer than k items available gives fewer columns.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if self.search_kind == "exact":
            return self._exact.search(queries, k, exclude=exclude)[1]
        extra = 0 if exclude is None else 1
        sims, ids = self._ivf.search(queries, min(k + extra, len(self)))
        return ids if exclude is None else drop_excluded(sims, ids, exclude)[1]


def _ivf_index(embeddings: np.ndarray, nprobe: int) -> tuple[Any, Any]:
    """A trained faiss IVF-Flat inner-product index holding ``embeddings``, and its quantizer."""
    import faiss

    count, dim = embeddings.shape
    nlist = max(1, min(int(4 * math.sqrt(count)), count // _IVF_MIN_POINTS_PER_LIST))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(embeddings)
    index.nprobe = min(nprobe, nlist)
    index.add(embeddings)
    return index, quantizer


def _class_histogram(positions: np.ndarray, ids: np.ndarray, n_classes: int) -> np.ndarray:
    """Per row, how many of its neighbour ids fall in each class (float64, (n, C))."""
    valid = ids >= 0
    rows = np.broadcast_to(np.arange(ids.shape[0])[:, None], ids.shape)[valid]
    flat = rows * n_classes + positions[ids[valid]]
    counts = np.bincount(flat, minlength=ids.shape[0] * n_classes)
    return counts.reshape(ids.shape[0], n_classes).astype(np.float64)


def _neighbour_histograms(
    index: NeighbourIndex,
    positions: np.ndarray,
    n_classes: int,
    queries: np.ndarray,
    k: int,
    exclude: np.ndarray | None,
) -> np.ndarray:
    """Class histograms of the k nearest library items of each query, searched in batches."""
    hist = np.zeros((queries.shape[0], n_classes), dtype=np.float64)
    for start in range(0, queries.shape[0], _QUERY_BATCH):
        stop = start + _QUERY_BATCH
        own = None if exclude is None else exclude[start:stop]
        ids = index.search(queries[start:stop], k, own)
        hist[start:stop] = _class_histogram(positions, ids, n_classes)
    return hist


def _transition_matrix(
    hist: np.ndarray, positions: np.ndarray, n_classes: int, smoothing: float
) -> np.ndarray:
    """Row-normalised counts M[i][j] = smoothing + neighbours of class j around class-i items."""
    counts = np.full((n_classes, n_classes), smoothing, dtype=np.float64)
    np.add.at(counts, positions, hist)
    return counts / counts.sum(axis=1, keepdims=True)


def _softmax_rows(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class KnnBayesScorer:
    """Scores texts 0..5 from the ratings of their nearest neighbours in a rated library.

    Build one with :meth:`fit` or :meth:`load`. Attributes: ``classes`` (sorted labels present),
    ``prior`` (their frequencies), ``transition`` (C x C, rows sum to 1), ``embeddings`` and
    ``labels`` of the library.
    """

    def __init__(
        self,
        index: NeighbourIndex,
        labels: np.ndarray,
        transition: np.ndarray,
        *,
        k_transition: int,
        smoothing: float,
        embedder: str | None = None,
    ):
        self.index = index
        self.labels = labels
        self.classes, self._positions, counts = np.unique(
            labels, return_inverse=True, return_counts=True
        )
        if transition.shape != (len(self.classes),) * 2:
            raise ValueError(f"transition must be C x C for the {len(self.classes)} classes")
        self.prior = counts / counts.sum()
        self.transition = transition
        self.k_transition = k_transition
        self.smoothing = smoothing
        self.embedder = embedder
        self._log_prior = np.log(self.prior)
        self._log_transition_t = np.log(transition).T

    @property
    def embeddings(self) -> np.ndarray:
        """The library's unit embeddings (N, d), float32."""
        return self.index.embeddings

    @classmethod
    def fit(
        cls,
        embeddings: np.ndarray,
        scores: np.ndarray,
        k_transition: int = 3,
        smoothing: float = 0.01,
        *,
        embedder: str | None = None,
        search: str = "exact",
        nprobe: int = 16,
    ) -> KnnBayesScorer:
        """Fit prior and transition matrix on a rated library (embeddings (N, d), scores 0..5)."""
        if k_transition < 1:
            raise ValueError(f"k_transition must be >= 1, got {k_transition}")
        if not smoothing > 0:
            raise ValueError(f"smoothing must be > 0, got {smoothing}")
        library = _unit_rows(embeddings)
        if library.shape[0] == 0:
            raise ValueError("the library is empty")
        labels = _check_labels(scores, library.shape[0])
        index = NeighbourIndex(library, search, nprobe)
        classes, positions = np.unique(labels, return_inverse=True)
        hist = _neighbour_histograms(
            index, positions, len(classes), library, k_transition, np.arange(len(labels))
        )
        transition = _transition_matrix(hist, positions, len(classes), smoothing)
        return cls(
            index,
            labels,
            transition,
            k_transition=k_transition,
            smoothing=smoothing,
            embedder=embedder,
        )

    # --- scoring --------------------------------------------------------------------------

    def histogram(
        self, embeddings: np.ndarray, k: int = 16, exclude_self: np.ndarray | None = None
    ) -> np.ndarray:
        """Class counts (n, C) among each query's k nearest library items.

        ``exclude_self``: when the queries are library rows, their row indices (n,), so each
        query leaves itself out (leave-one-out).
        """
        queries = _unit_rows(embeddings, dim=self.embeddings.shape[1])
        exclude = None
        if exclude_self is not None:
            exclude = np.asarray(exclude_self, dtype=np.int64)
            if exclude.shape != (queries.shape[0],):
                raise ValueError("exclude_self must hold one library index per query")
        return _neighbour_histograms(
            self.index, self._positions, len(self.classes), queries, k, exclude
        )

    def posterior_from_histogram(self, hist: np.ndarray) -> np.ndarray:
        """Softmax of ``log p + H @ log(T).T``: the class posterior (n, C) of each histogram row."""
        return _softmax_rows(self._log_prior + hist @ self._log_transition_t)

    def posterior(
        self, embeddings: np.ndarray, k: int = 16, exclude_self: np.ndarray | None = None
    ) -> np.ndarray:
        """Posterior over ``classes`` (n, C) of each query embedding."""
        return self.posterior_from_histogram(self.histogram(embeddings, k, exclude_self))

    def expected(
        self, embeddings: np.ndarray, k: int = 16, exclude_self: np.ndarray | None = None
    ) -> np.ndarray:
        """Expected score E = sum_i classes_i * post_i of each query (n,)."""
        return self.score(embeddings, k, exclude_self).expected

    def mode(
        self, embeddings: np.ndarray, k: int = 16, exclude_self: np.ndarray | None = None
    ) -> np.ndarray:
        """The class with the highest posterior for each query (n,)."""
        return self.score(embeddings, k, exclude_self).mode

    def score(
        self, embeddings: np.ndarray, k: int = 16, exclude_self: np.ndarray | None = None
    ) -> KnnBayesScores:
        """Posterior, expected score and mode in one search."""
        post = self.posterior(embeddings, k, exclude_self)
        return KnnBayesScores(post, post @ self.classes, self.classes[post.argmax(axis=1)])

    def leave_one_out(self, k: int = 16) -> KnnBayesScores:
        """Scores of the library's own items, each ignoring itself among its neighbours."""
        return self.score(self.embeddings, k, np.arange(len(self.labels)))

    # --- persistence ----------------------------------------------------------------------

    def meta(self) -> dict:
        """What ``meta.json`` holds."""
        return {
            "version": FORMAT_VERSION,
            "count": int(self.embeddings.shape[0]),
            "dim": int(self.embeddings.shape[1]),
            "classes": self.classes.tolist(),
            "prior": self.prior.tolist(),
            "transition": self.transition.tolist(),
            "k_transition": self.k_transition,
            "smoothing": self.smoothing,
            "embedder": self.embedder,
            "search": self.index.search_kind,
            "nprobe": self.index.nprobe,
        }

    def save(self, directory: str | Path) -> None:
        """Write embeddings.npy, labels.npy and meta.json (no pickle; the index is rebuilt)."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / EMBEDDINGS_FILE, self.embeddings, allow_pickle=False)
        np.save(folder / LABELS_FILE, self.labels, allow_pickle=False)
        (folder / META_FILE).write_text(json.dumps(self.meta(), indent=1), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> KnnBayesScorer:
        """Read a folder written by :meth:`save`, validating every file against meta.json."""
        folder = Path(directory)
        meta = _read_meta(folder / META_FILE)
        embeddings = _read_array(folder / EMBEDDINGS_FILE)
        labels = _read_array(folder / LABELS_FILE)
        _check_arrays(folder, embeddings, labels, meta)
        _check_classes(folder / META_FILE, labels, meta)
        return cls(
            NeighbourIndex(np.ascontiguousarray(embeddings), meta["search"], meta["nprobe"]),
            labels.astype(np.int64),
            _checked_transition(folder / META_FILE, meta),
            k_transition=meta["k_transition"],
            smoothing=meta["smoothing"],
            embedder=meta["embedder"],
        )


# --- loading helpers ----------------------------------------------------------------------

_META_KEYS = (
    "version",
    "count",
    "dim",
    "classes",
    "prior",
    "transition",
    "k_transition",
    "smoothing",
    "embedder",
    "search",
    "nprobe",
)


def _read_meta(path: Path) -> dict:
    if not path.is_file():
        raise ScorerFormatError(f"missing scorer file: {path}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ScorerFormatError(f"{path}: not valid JSON ({error})") from error
    missing = [key for key in _META_KEYS if not isinstance(meta, dict) or key not in meta]
    if missing:
        raise ScorerFormatError(f"{path}: missing keys {missing}")
    if meta["version"] != FORMAT_VERSION:
        raise ScorerFormatError(
            f"{path}: format version {meta['version']}, expected {FORMAT_VERSION}"
        )
    if meta["search"] not in SEARCH_KINDS:
        raise ScorerFormatError(f"{path}: unknown search kind {meta['search']!r}")
    return meta


def _read_array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise ScorerFormatError(f"missing scorer file: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as error:
        raise ScorerFormatError(f"{path}: not a plain numpy array ({error})") from error


def _check_arrays(folder: Path, embeddings: np.ndarray, labels: np.ndarray, meta: dict) -> None:
    shape = (meta["count"], meta["dim"])
    if embeddings.dtype != np.float32 or embeddings.shape != shape:
        raise ScorerFormatError(
            f"{folder / EMBEDDINGS_FILE}: expected float32 {shape}, "
            f"got {embeddings.dtype} {embeddings.shape}"
        )
    if not np.all(np.isfinite(embeddings)):
        raise ScorerFormatError(f"{folder / EMBEDDINGS_FILE}: non-finite values")
    if labels.dtype.kind not in "iu" or labels.shape != (meta["count"],):
        raise ScorerFormatError(
            f"{folder / LABELS_FILE}: expected {meta['count']} integers, "
            f"got {labels.dtype} {labels.shape}"
        )
    if labels.size and (labels.min() < SCORE_MIN or labels.max() > SCORE_MAX):
        raise ScorerFormatError(f"{folder / LABELS_FILE}: labels outside 0..5")


def _checked_transition(path: Path, meta: dict) -> np.ndarray:
    transition = np.asarray(meta["transition"], dtype=np.float64)
    n_classes = len(meta["classes"])
    if transition.shape != (n_classes, n_classes):
        raise ScorerFormatError(f"{path}: transition is not {n_classes} x {n_classes}")
    if not np.all(transition > 0) or not np.allclose(transition.sum(axis=1), 1.0, atol=1e-9):
        raise ScorerFormatError(f"{path}: transition rows must be positive and sum to 1")
    return transition


def _check_classes(path: Path, labels: np.ndarray, meta: dict) -> None:
    classes, counts = np.unique(labels, return_counts=True)
    if classes.tolist() != meta["classes"]:
        raise ScorerFormatError(f"{path}: classes do not match {LABELS_FILE}")
    prior = np.asarray(meta["prior"], dtype=np.float64)
    if prior.shape != classes.shape or not np.allclose(prior, counts / counts.sum(), atol=1e-12):
        raise ScorerFormatError(f"{path}: prior does not match {LABELS_FILE}")


# --- rewards --------------------------------------------------------------------------------


def banded_reward(expected: np.ndarray, mode: np.ndarray) -> np.ndarray:
    """Paper's quality reward: 1.0 if E >= 4; 0.3 if the mode is 3 or 3 <= E < 4; else 0."""
    e = np.asarray(expected, dtype=np.float64)
    middle = (np.asarray(mode) == 3) | ((e >= 3) & (e < 4))
    return np.where(e >= 4, 1.0, np.where(middle, 0.3, 0.0))


def continuous_reward(expected: np.ndarray) -> np.ndarray:
    """Continuous quality reward E / 5, in [0, 1]."""
    return np.asarray(expected, dtype=np.float64) / SCORE_MAX


# --- one scorer per task type ----------------------------------------------------------------


@dataclass(frozen=True)
class ScorerLibrary:
    """Scorers by task type (qa, mcq, tfq, cs, paragraph, ...) with a "default" fallback."""

    scorers: Mapping[str, KnnBayesScorer]

    def for_task(self, task_type: str | None) -> KnnBayesScorer:
        """The task's own scorer, else the default one."""
        for name in (task_type, DEFAULT_TASK):
            if name in self.scorers:
                return self.scorers[name]
        raise KeyError(
            f"no scorer for task {task_type!r} and no {DEFAULT_TASK!r} scorer "
            f"(have: {sorted(self.scorers)})"
        )

    def save(self, root: str | Path) -> None:
        """Write each scorer to ``root/<task_type>/``."""
        for name, scorer in self.scorers.items():
            scorer.save(Path(root) / name)


def load_task_scorers(root: str | Path) -> ScorerLibrary:
    """Load every ``root/<task_type>/`` folder that holds a saved scorer."""
    folders = sorted(p for p in Path(root).iterdir() if (p / META_FILE).is_file())
    if not folders:
        raise ScorerFormatError(f"no saved scorer (a folder with {META_FILE}) under {root}")
    return ScorerLibrary({folder.name: KnnBayesScorer.load(folder) for folder in folders})
