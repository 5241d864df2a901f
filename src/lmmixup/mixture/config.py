"""The MIXTURE builder's settings (`MixtureConfig`) and the names of its outputs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from lmmixup.config import DEFAULT_EMBEDDER, BackendConfig, Section, SourceSpec
from lmmixup.mixture.degrade import OPERATORS
from lmmixup.records import TASK_TYPES

TaskType = Literal["qa", "mcq", "tfq", "cs", "paragraph"]
SPLITS = ("sft", "grpo_train", "grpo_test")
REJECTS_FILE = "rejects.jsonl"  # seed rows that could not be read, beside the splits
LEXICAL = "lexical"
"""Embedder name for hashed bag-of-words vectors: no model, for tests and `--no-embed`."""


def _default_seeds() -> list[SourceSpec]:
    return [SourceSpec(path="gsm8k"), SourceSpec(path="sharegpt")]


class MixtureConfig(Section):
    """How `lmmixup mixture build` makes the distiller's training data."""

    seeds: list[SourceSpec] = Field(
        default_factory=_default_seeds,
        description="High-quality seed samples: pool files or built-in sources (gsm8k, sharegpt), each with an optional sample size.",
    )
    min_prompt_chars: int = Field(10, ge=0, description="Drop seeds whose prompt is shorter.")
    max_prompt_chars: int = Field(800, ge=1, description="Drop seeds whose prompt is longer.")
    min_completion_chars: int = Field(
        20, ge=0, description="Drop seeds whose completion is shorter."
    )
    max_completion_chars: int = Field(
        1500, ge=1, description="Drop seeds whose completion is longer."
    )
    min_score: int = Field(
        4,
        ge=0,
        le=5,
        description="A seed that carries a rating (meta.rating) needs at least this compressed score; a failed rating drops it; unrated seeds are taken as high quality.",
    )
    allow_code: bool = Field(
        False, description="Keep seeds that look like code (fenced blocks, code lines)."
    )
    task_weights: dict[TaskType, float] = Field(
        default_factory=lambda: dict.fromkeys(TASK_TYPES, 1.0),
        description="Relative chance of each task type among those a seed supports (0 or absent = never).",
    )
    task_quotas: dict[TaskType, int] = Field(
        default_factory=dict,
        description="Most records of a task type (merged records count as qa); absent = no limit.",
    )
    cot: bool = Field(
        True,
        description="Put GSM8K-style worked solutions in `think` (the answer then states only the result); false: the solution stays in the answer and the think is a short note on the merge.",
    )
    min_size: int = Field(2, ge=2, description="Fewest variants in a cluster.")
    max_size: int = Field(20, ge=2, description="Most variants in a cluster.")
    mean_size: float = Field(
        6.0, gt=0, description="Mean of the normal distribution cluster sizes are drawn from."
    )
    std_size: float = Field(3.0, ge=0, description="Its standard deviation.")
    cross_topic_fraction: float = Field(
        0.15,
        ge=0,
        lt=1,
        description="Fraction of records that merge two similar seeds into one qa target.",
    )
    cross_topic_pool: float = Field(
        1.5,
        ge=1,
        description="Nearest neighbours are searched among this many sampled seeds per merged seed (more = closer pairs, more embedding time).",
    )
    cross_topic_min_similarity: float = Field(
        0.3,
        ge=-1,
        le=1,
        description="Merge two seeds only when the cosine similarity of their embeddings is at least this.",
    )
    embedder: str = Field(
        DEFAULT_EMBEDDER,
        description=f"Sentence embedder that finds similar seeds; '{LEXICAL}' = hashed word counts, no model.",
    )
    operators: list[str] = Field(
        default_factory=lambda: list(OPERATORS),
        description=f"Rule-based degradation operators to use: {', '.join(OPERATORS)}.",
    )
    max_operators: int = Field(
        3, ge=1, le=3, description="Each rule-based variant applies 1 to this many operators."
    )
    degrader: BackendConfig | None = Field(
        None, description="A model that writes degraded variants too; null = rule-based only."
    )
    llm_fraction: float = Field(
        0.5, ge=0, le=1, description="With a degrader: share of the variants it writes."
    )
    llm_max_new_tokens: int = Field(
        400, ge=16, description="With a degrader: tokens it may write per variant."
    )
    llm_temperature: float = Field(
        0.8, ge=0, description="With a degrader: sampling temperature (0 = greedy)."
    )
    llm_prefix: str = Field(
        "",
        description="With a degrader: text its reply is pre-filled with; 'Q:' steers small local models into the Q:/A: form (hf backend, vLLM servers).",
    )
    sft_fraction: float = Field(
        0.3, gt=0, lt=1, description="Share of records for SFT cold start; the rest is GRPO."
    )
    grpo_test_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of the GRPO records held out as its test split."
    )
    max_examples: int | None = Field(
        None, ge=1, description="Build at most this many records (null = from all seeds)."
    )
    seed: int = Field(0, description="Seed for every random choice.")

    @field_validator("operators")
    @classmethod
    def _known_operators(cls, names: list[str]) -> list[str]:
        unknown = [name for name in names if name not in OPERATORS]
        if unknown or not names:
            raise ValueError(
                f"operators must be a non-empty list of {', '.join(OPERATORS)}; unknown: {unknown}"
            )
        return names

    @model_validator(mode="after")
    def _consistent(self) -> MixtureConfig:
        if self.min_size > self.max_size:
            raise ValueError(
                f"min_size ({self.min_size}) is larger than max_size ({self.max_size})"
            )
        if self.min_completion_chars > self.max_completion_chars:
            raise ValueError("min_completion_chars is larger than max_completion_chars")
        if self.min_prompt_chars > self.max_prompt_chars:
            raise ValueError("min_prompt_chars is larger than max_prompt_chars")
        return self

    def split_fractions(self) -> dict[str, float]:
        """Each split's share of all records."""
        grpo = 1 - self.sft_fraction
        return {
            "sft": self.sft_fraction,
            "grpo_train": grpo * (1 - self.grpo_test_fraction),
            "grpo_test": grpo * self.grpo_test_fraction,
        }
