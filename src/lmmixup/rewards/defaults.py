"""Ready-made reward callables for a TRL script: the bundled embedder and the library named by
``$LMMIXUP_QUALITY_LIBRARY``, each loaded once per process on first use."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from lmmixup.backends.embed import load_embedder
from lmmixup.config import DEFAULT_EMBEDDER
from lmmixup.errors import LmmixupError
from lmmixup.method.knn_bayes import load_task_scorers
from lmmixup.rewards.functions import (
    Completion,
    RewardFn,
    make_alignment_reward,
    make_format_reward,
    make_mixup_reward,
    make_quality_reward,
)
from lmmixup.rewards.library import library_embedder

LIBRARY_ENV = "LMMIXUP_QUALITY_LIBRARY"


@lru_cache(maxsize=1)
def _default_alignment() -> RewardFn:
    """Threshold alignment with the bundled embedder."""
    return make_alignment_reward(load_embedder(DEFAULT_EMBEDDER))


@lru_cache(maxsize=2)
def _quality_for(folder: str) -> RewardFn:
    """Banded quality with the library in ``folder`` and the embedder it was built with."""
    library = load_task_scorers(folder)
    return make_quality_reward(library, load_embedder(library_embedder(library)))


def _library_folder() -> str:
    """The library folder named by ``$LMMIXUP_QUALITY_LIBRARY``; an error when unset."""
    folder = os.environ.get(LIBRARY_ENV)
    if not folder:
        raise LmmixupError(
            f"the quality reward needs a kNN-Bayes library: build one with "
            f"`lmmixup rewards build-library RATED.jsonl -o DIR` and set {LIBRARY_ENV}=DIR "
            f"(or call make_quality_reward with a loaded library)"
        )
    return folder


format_reward = make_format_reward()


def alignment_reward(completions: Sequence[Completion], **columns: Any) -> list[float]:
    """Threshold alignment (cosine >= 0.8) with the bundled MiniLM, loaded on first use."""
    return _default_alignment()(completions, **columns)


def quality_reward(completions: Sequence[Completion], **columns: Any) -> list[float]:
    """Banded kNN-Bayes quality with the library in ``$LMMIXUP_QUALITY_LIBRARY``."""
    return _quality_for(_library_folder())(completions, **columns)


mixup_reward = make_mixup_reward(quality_reward, alignment_reward, format_reward)
