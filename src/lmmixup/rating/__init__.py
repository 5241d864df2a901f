"""Rating the pool: the judge rubric, the kNN-Bayes scorer and score curation (SPEC 1-2).

faiss is imported only when a scorer's index is built, so importing this package is cheap.
"""

from lmmixup.rating.curation import CurationResult, flag_inconsistent
from lmmixup.rating.knn_bayes import (
    KnnBayesScorer,
    KnnBayesScores,
    ScorerFormatError,
    ScorerLibrary,
    banded_reward,
    continuous_reward,
    load_task_scorers,
)
from lmmixup.rating.rubric import (
    RUBRIC_LOGPROB_SYSTEM,
    RUBRIC_SYSTEM,
    LogprobPrompt,
    Rating,
    build_rubric_logprob_prompt,
    build_rubric_messages,
    compress_score,
    is_high,
    parse_rating,
    read_rating,
)

__all__ = [
    "RUBRIC_LOGPROB_SYSTEM",
    "RUBRIC_SYSTEM",
    "CurationResult",
    "KnnBayesScorer",
    "KnnBayesScores",
    "LogprobPrompt",
    "Rating",
    "ScorerFormatError",
    "ScorerLibrary",
    "banded_reward",
    "build_rubric_logprob_prompt",
    "build_rubric_messages",
    "compress_score",
    "continuous_reward",
    "flag_inconsistent",
    "is_high",
    "load_task_scorers",
    "parse_rating",
    "read_rating",
]
