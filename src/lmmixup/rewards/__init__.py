"""GRPO rewards for the distiller as TRL reward callables, their configuration and the quality
reward's kNN-Bayes library.

``format_reward``, ``alignment_reward``, ``quality_reward`` and ``mixup_reward`` are ready to
pass to TRL (env defaults: :mod:`lmmixup.rewards.defaults`); ``make_*_reward`` build them from
loaded parts (:mod:`lmmixup.rewards.functions`); :class:`RewardSettings` and
:func:`load_reward_set` give the configured set (:mod:`lmmixup.rewards.config`).
"""

from lmmixup.rewards.config import (
    COMPONENTS,
    RewardSet,
    RewardSettings,
    build_reward_set,
    load_reward_set,
)
from lmmixup.rewards.defaults import (
    LIBRARY_ENV,
    alignment_reward,
    format_reward,
    mixup_reward,
    quality_reward,
)
from lmmixup.rewards.functions import (
    MIXUP_WEIGHTS,
    Completion,
    RewardFn,
    answer_of,
    completion_text,
    format_score,
    make_alignment_reward,
    make_format_reward,
    make_mixup_reward,
    make_quality_reward,
)
from lmmixup.rewards.library import (
    build_library,
    class_counts,
    library_embedder,
    library_groups,
    read_rated,
    save_library,
)
from lmmixup.rewards.stats import REWARD_STATS, RewardError, RewardStats

__all__ = [
    "COMPONENTS",
    "LIBRARY_ENV",
    "MIXUP_WEIGHTS",
    "REWARD_STATS",
    "Completion",
    "RewardError",
    "RewardFn",
    "RewardSet",
    "RewardSettings",
    "RewardStats",
    "alignment_reward",
    "answer_of",
    "build_library",
    "build_reward_set",
    "class_counts",
    "completion_text",
    "format_reward",
    "format_score",
    "library_embedder",
    "library_groups",
    "load_reward_set",
    "make_alignment_reward",
    "make_format_reward",
    "make_mixup_reward",
    "make_quality_reward",
    "mixup_reward",
    "quality_reward",
    "read_rated",
    "save_library",
]
