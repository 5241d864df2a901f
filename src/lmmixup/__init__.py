"""lmmixup: instruction distillation with LM-Mixup.

The names below are the public Python API; each is imported on first use, so
``import lmmixup`` stays cheap (no torch, numpy or faiss until you touch a name that needs it).
The GUIDE's "Python API" section has a worked example; docs/ARCHITECTURE.md shows where
each name lives.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    # the method's algorithms (pure, no I/O)
    "KnnBayesScorer": "lmmixup.method.knn_bayes",
    "ScorerLibrary": "lmmixup.method.knn_bayes",
    "cluster_embeddings": "lmmixup.method.clustering",
    "draw_cluster_sizes": "lmmixup.method.cluster_sizes",
    "long_tail_scores": "lmmixup.method.selection",
    "rank_records": "lmmixup.method.selection",
    "cosine_top_k": "lmmixup.method.knn",
    "parse_rating": "lmmixup.method.rubric",
    "compress_score": "lmmixup.method.rubric",
    "Rating": "lmmixup.method.rubric",
    "parse_output": "lmmixup.method.reply",
    "reply_format": "lmmixup.method.reply",
    "build_messages": "lmmixup.method.prompt",
    # models
    "load_embedder": "lmmixup.backends.embed",
    "load_generator": "lmmixup.backends",
    # the stages, one file in, one file out
    "import_pool": "lmmixup.stages.import_pool",
    "rate_pool": "lmmixup.stages.rate",
    "split_file": "lmmixup.stages.split",
    "cluster_file": "lmmixup.stages.cluster",
    "distill_clusters": "lmmixup.stages.distill",
    "select_files": "lmmixup.stages.select",
    "decontaminate": "lmmixup.stages.decontaminate",
    # whole jobs and their configuration
    "RunConfig": "lmmixup.config",
    "load_config": "lmmixup.config",
    "run_pipeline": "lmmixup.workflows.pipeline",
    "run_experiment": "lmmixup.workflows.experiment",
    "write_report": "lmmixup.report",
    "MixtureConfig": "lmmixup.mixture",
    "build_mixture": "lmmixup.mixture",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'lmmixup' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
