"""Configuration: one pydantic model per stage, YAML in and out, dotted CLI overrides.

Every field has a description; `lmmixup config init` writes them as comments, so the default
config documents itself. Unknown keys are errors that name the key.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from lmmixup.config.base import (
    ADDED_LATER,
    DEFAULT_EMBEDDER,
    DEFAULT_LM,
    DEVICE_HELP,
    EMBED_DEVICE,
    OPERATIONAL,
    VLLM_BATCH,
    DeviceName,
    Section,
)
from lmmixup.config.executor import ExecutorConfig
from lmmixup.errors import ConfigError


class SourceSpec(Section):
    path: str = Field(
        description="A file (JSONL, JSON, Parquet, CSV), a saved HF dataset dir, or a built-in source: sharegpt, gsm8k."
    )
    sample: int | None = Field(
        None,
        ge=1,
        description="Keep a seeded random sample of this many rows from this source (after filtering).",
    )
    match: str | None = Field(
        None,
        description="Filter: keep only rows whose prompt matches this regular expression (Python re.search; `(?i)` for any case). The same source may be listed twice, e.g. a sample plus the rows on one topic; a row both keep is imported once.",
        json_schema_extra=ADDED_LATER,
    )

    @field_validator("match")
    @classmethod
    def _valid_pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression ({exc})") from None
        return value

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value


class ImportConfig(Section):
    sources: list[SourceSpec] = Field(
        default_factory=list,
        description="What to import; used by `lmmixup run` (the CLI takes sources as arguments).",
    )
    reject_over_chars: int = Field(
        1_000_000,
        ge=1,
        description="A prompt or completion longer than this is a bad row (rejected, not truncated).",
    )
    min_prompt_chars: int = Field(
        0, ge=0, description="Filter: drop pairs whose prompt is shorter than this."
    )
    max_prompt_chars: int | None = Field(
        None,
        ge=1,
        description="Filter: drop pairs whose prompt is longer than this (null = no limit).",
    )
    min_completion_chars: int = Field(
        0, ge=0, description="Filter: drop pairs whose completion is shorter than this."
    )
    max_completion_chars: int | None = Field(
        None,
        ge=1,
        description="Filter: drop pairs whose completion is longer than this (null = no limit).",
    )
    sample: int | None = Field(
        None, ge=1, description="Keep a seeded random sample of this many rows in total."
    )
    limit: int | None = Field(
        None, ge=1, description="Keep at most the first N rows (after sampling)."
    )
    holdout_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Set aside this fraction of the imported rows (seeded) as heldout.jsonl: never rated, clustered or selected; `lmmixup experiment` evaluates on it.",
    )
    holdout_max: int | None = Field(
        None, ge=1, description="At most this many held-out rows (null = no cap)."
    )
    seed: int = Field(0, description="Seed for sampling and the hold-out split.")
    streaming: bool = Field(
        False,
        description="Read Hub datasets as they download instead of downloading them whole (also on whenever `limit` is set).",
        json_schema_extra=OPERATIONAL,
    )


class BackendConfig(Section):
    backend: Literal["hf", "openai", "vllm"] = Field(
        "hf",
        description="hf: a local transformers model; openai: any OpenAI-compatible server (OpenAI, vLLM, llama.cpp); vllm: in-process vLLM (GPU only).",
    )
    model: str = Field(
        DEFAULT_LM,
        description="A local path, a bundled name (bundled:smollm2-135m-instruct) or a hub id / server model name.",
    )
    base_url: str | None = Field(
        None, description="openai backend: the server's base URL, e.g. http://localhost:8000/v1."
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        description="openai backend: environment variable holding the API key (never put a key in a config).",
        json_schema_extra=OPERATIONAL,
    )
    api_key_file: str | None = Field(
        None,
        description="openai backend: file holding the API key, used when the variable is unset.",
        json_schema_extra=OPERATIONAL,
    )
    concurrency: int = Field(
        8,
        ge=1,
        description="openai backend: requests in flight at once.",
        json_schema_extra=OPERATIONAL,
    )
    max_requests: int | None = Field(
        None,
        ge=1,
        description="openai backend: hard cap on requests this run; the stage stops cleanly with partial results saved.",
        json_schema_extra=OPERATIONAL,
    )
    max_retries: int = Field(
        5,
        ge=0,
        description="openai backend: retries on 429/5xx/timeouts, with exponential backoff (Retry-After honoured).",
        json_schema_extra=OPERATIONAL,
    )
    timeout_s: float = Field(
        120.0,
        gt=0,
        description="openai backend: per-request timeout in seconds.",
        json_schema_extra=OPERATIONAL,
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="hf/vllm backend: weights dtype; auto = bfloat16 where the CPU/GPU supports it (float16 on a GPU without bf16).",
    )
    device: DeviceName = Field(
        "auto",
        description=f"hf backend: where the model runs: {DEVICE_HELP}",
        json_schema_extra=OPERATIONAL,
    )
    tensor_parallel_size: int = Field(
        1,
        ge=1,
        description="vllm backend: GPUs the model is split across.",
        json_schema_extra=OPERATIONAL,
    )
    gpu_memory_utilization: float = Field(
        0.9,
        gt=0,
        le=1,
        description="vllm backend: share of each GPU's memory vLLM may take (weights and KV cache).",
        json_schema_extra=OPERATIONAL,
    )
    max_model_len: int | None = Field(
        None,
        ge=16,
        description="vllm backend: context length (prompt + reply) in tokens; null = the model's own. Lower it when the KV cache does not fit.",
        json_schema_extra=OPERATIONAL,
    )
    batch_size: int = Field(
        16,
        ge=1,
        description=f"hf backend: rows decoded or scored at once (a call gets 4 batches of records; a row that ends gives its slot to the next); vllm backend: prompts per vLLM call (the stage's batch, written when it returns; {VLLM_BATCH} when not set).",
        json_schema_extra=OPERATIONAL,
    )

    @model_validator(mode="before")
    @classmethod
    def _vllm_takes_whole_batches(cls, data: Any) -> Any:
        """vLLM schedules its own batches: hand it a whole stage batch unless told otherwise."""
        if isinstance(data, dict) and data.get("backend") == "vllm" and "batch_size" not in data:
            return {**data, "batch_size": VLLM_BATCH}
        return data


class RateConfig(Section):
    judge: BackendConfig = Field(default_factory=BackendConfig, description="The judge model.")
    mode: Literal["auto", "logprob", "generate"] = Field(
        "auto",
        validate_default=True,
        description="logprob reads the probability of each score 1..10 (hf judge: one forward pass; openai backend: the server's top logprobs); generate lets the model write the JSON; auto = logprob for an hf judge, for an openai server that gives logprobs (one probe request at the start), else generate. The mode used is recorded in the manifest.",
    )
    max_new_tokens: int = Field(96, ge=8, description="generate mode: tokens the judge may write.")
    attempts: int = Field(
        2,
        ge=1,
        description="generate mode: tries per sample before recording a failure (retried on the next run).",
    )
    method: Literal["judge", "knn"] = Field(
        "judge",
        description="judge: rate every sample with the judge; knn: score with a kNN-Bayes library (--library).",
    )
    library: str | None = Field(
        None,
        description="knn method: a library folder built by `lmmixup rewards build-library` or a previous propagation.",
    )
    propagate: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Judge only this fraction of the pool and score the rest with a kNN-Bayes scorer fitted on those ratings.",
    )
    curate: bool = Field(
        False,
        description="Flag ratings that disagree with their embedding neighbourhood (DS2-style) and report the noise estimate.",
    )
    embedder: str = Field(DEFAULT_EMBEDDER, description="Sentence embedder for kNN scoring.")
    embed_device: DeviceName = EMBED_DEVICE
    k: int = Field(16, ge=1, description="kNN-Bayes: neighbours used to score a sample.")
    search: Literal["auto", "exact", "ivf"] = Field(
        "auto",
        description="kNN-Bayes neighbour search: exact (SPEC), ivf (approximate, ~4x faster on large libraries; 99.9% same mode in our benchmark), or auto (exact below 20,000 library items, ivf from there).",
    )
    k_transition: int = Field(
        3, ge=1, description="kNN-Bayes: neighbours used to estimate the transition matrix."
    )
    seed: int = Field(0, description="Seed for choosing the judged fraction.")
    rubric_by_task: bool = Field(
        False,
        description="Add to the rubric a paragraph on what correct and informative mean for the record's task_type (qa, mcq, tfq, cs, paragraph); records without one get the plain rubric. Off: one rubric for all.",
        json_schema_extra=ADDED_LATER,
    )

    @field_validator("mode")
    @classmethod
    def _mode_for_backend(cls, mode: str, info: ValidationInfo) -> str:
        """Resolve `auto` for hf (logprob) and vllm (generate) judges; an openai judge's
        `auto` is resolved when the stage starts, by asking the server. Refuse logprob for vllm.

        Raises ConfigError itself (pydantic passes it through), so that code building a
        RateConfig directly gets the same one-line error as a config file.
        """
        judge = info.data.get("judge")
        if judge is None:  # the judge section is invalid: pydantic reports that
            return mode
        if mode == "auto" and judge.backend != "openai":
            return "logprob" if judge.backend == "hf" else "generate"
        if mode == "logprob" and judge.backend not in ("hf", "openai"):
            raise ConfigError(
                f"rate.mode=logprob reads token probabilities, which judge.backend=hf and "
                f"openai give (got {judge.backend}); leave the mode out or use --mode generate"
            )
        return mode


class SplitConfig(Section):
    threshold: int = Field(
        4,
        ge=0,
        le=5,
        description="High quality <=> compressed score >= threshold (4 means overall >= 8).",
    )
    high_fraction: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Instead of the threshold, take this top fraction by rating as high (for weak judges whose scores bunch up).",
    )


class ClusterConfig(Section):
    min_size: int = Field(2, ge=1, description="Smallest cluster.")
    max_size: int = Field(25, ge=1, description="Largest cluster.")
    mean_size: float = Field(
        10.0, gt=0, description="Mean of the normal distribution cluster sizes are drawn from."
    )
    std_size: float = Field(
        3.0, ge=0, description="Standard deviation of the cluster-size distribution."
    )
    seed: int = Field(0, description="Seed for sizes and k-means.")
    per_source: bool = Field(False, description="Cluster each source subset separately.")
    embedder: str = Field(
        DEFAULT_EMBEDDER, description="Sentence embedder for prompt + completion."
    )
    embed_device: DeviceName = EMBED_DEVICE
    min_cohesion: float = Field(
        0.95,
        ge=0,
        le=1,
        description="Cohesion floor (mean cosine of the members to their centre): a cluster below it is written with coherent: false and not distilled, so unrelated samples are never merged; its members stay unselected low-quality rows. 0.95 is measured for the bundled MiniLM embedder (docs/BENCHMARKS.md); 0 distills every cluster.",
    )
    greedy_seeding: bool = Field(
        False,
        description="Seed k-means with greedy k-means++ (the best of 2 + ln k candidates per seed, as scikit-learn and the paper's reference do) instead of plain k-means++. Off: on MiniLM embeddings of the bundled pairs it gave 1-4% less cohesive clusters (docs/BENCHMARKS.md).",
    )
    dedup_threshold: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Near-duplicate removal before clustering: a record whose cosine to an earlier kept record is at least this is not clustered and goes to the stage's rejects file (reason near_duplicate, with the id it duplicates). null = off (the default: it removes the redundant variants the method merges); the paper's code uses 0.92.",
    )

    @model_validator(mode="after")
    def _sizes_consistent(self) -> ClusterConfig:
        if self.min_size > self.max_size:
            raise ValueError(
                f"min_size ({self.min_size}) is larger than max_size ({self.max_size})"
            )
        return self


class DistillConfig(Section):
    generator: BackendConfig = Field(
        default_factory=BackendConfig, description="The distiller model."
    )
    max_new_tokens: int = Field(
        512,
        ge=16,
        description="Tokens the distiller may write per cluster (the paper allows 2,400).",
    )
    temperature: float = Field(0.0, ge=0, description="0 = greedy decoding.")
    repetition_penalty: float = Field(
        1.05, ge=1.0, description="Repetition penalty (the paper uses 1.05)."
    )
    default_task_type: Literal["qa", "mcq", "tfq", "cs", "paragraph"] = Field(
        "qa", description="Task type for clusters whose records have none."
    )
    max_member_chars: int = Field(
        1500, ge=50, description="Each member's text is cut to this many characters in the prompt."
    )
    min_member_similarity: float = Field(
        0.3,
        ge=-1,
        le=1,
        description="Faithfulness: drop a distillation whose mean cosine to its members is below this (drift).",
    )
    answer_prefix: str = Field(
        "",
        description="Text the distiller's reply is pre-filled with. Empty for a trained distiller; an untrained chat model can be steered into the format with e.g. '<answer>\\nQ:'.",
    )
    extra_stops: list[str] = Field(
        default_factory=list,
        description="More stop strings besides </answer>; stopping on one closes the answer. Untrained chat models run on into a new pair: stop them at e.g. '\\n\\nQ:'.",
    )
    embedder: str = Field(
        DEFAULT_EMBEDDER, description="Sentence embedder for the faithfulness (drift) check."
    )
    embed_device: DeviceName = EMBED_DEVICE
    max_copy_overlap: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Faithfulness: drop a distillation whose answer repeats one member this closely (word-level similarity).",
    )
    near_copy_share: float = Field(
        0.75,
        gt=0,
        le=1,
        description="Verifier near_copy: drop a pair whose completion repeats one member's completion (runs of 4+ words) for this share of its words and then ends with words no member has.",
    )
    splice_similarity: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Verifier spliced: drop a pair whose prompt is taken from one member's and completion from another's (at least this share of the words of each, in order) when those members ask different things.",
        json_schema_extra=ADDED_LATER,
    )
    leak_min_words: int = Field(
        6,
        ge=3,
        description="Verifier leaked_instruction: drop a pair that repeats this many words in a row of the distiller's own instructions (the merge prompt, the training targets' think sentence) that no member has.",
        json_schema_extra=ADDED_LATER,
    )
    free_number_max: float = Field(
        10,
        ge=0,
        description="Verifier unsupported_number: numbers up to this (step numbers, small counts) need no member to contain them.",
    )
    max_unsupported_numbers: int = Field(
        2,
        ge=0,
        description="Verifier unsupported_number: numbers (besides the final answer, which must always be supported) that no member has and the pair does not compute; more fail.",
    )
    max_unsupported_entities: int = Field(
        2,
        ge=0,
        description="Verifier unsupported_entity: capitalised words mid-sentence (names, places, products) that no member has; more fail.",
    )
    min_coverage: float = Field(
        0.3,
        ge=0,
        le=1,
        description="Verifier low_coverage: the pair must keep at least this mean share of each member's key terms (content words, numbers).",
    )
    min_member_coverage: float = Field(
        0.15,
        ge=0,
        le=1,
        description="Verifier dropped_member: the pair must keep at least this share of every member's key terms; less means the merge left a member out (2 of the 699 bundled MIXTURE target merges fall below 0.15).",
        json_schema_extra=ADDED_LATER,
    )
    min_term_support: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Verifier unsupported_terms: at least this share of the pair's key terms must appear in some member; less means the pair is mostly content no member has (30 of the 699 bundled MIXTURE targets, whose members are degraded copies, fall below 0.5).",
        json_schema_extra=ADDED_LATER,
    )
    redundant_coverage: float = Field(
        0.9,
        gt=0,
        le=1,
        description="A pair keeping at least this share of every member's key terms merges redundant samples: a copy of one member is then the merge, not a `copy` fault.",
        json_schema_extra=ADDED_LATER,
    )
    candidates: int = Field(
        1,
        ge=1,
        description="Candidates per cluster: 1 = one reply (greedy by default); n > 1 adds n-1 samples at candidate_temperature and keeps the best that passes every check.",
    )
    candidate_temperature: float = Field(
        0.7,
        gt=0,
        description="Sampling temperature of the extra candidates when candidates > 1.",
    )


class RerateConfig(Section):
    threshold: int = Field(
        4, ge=0, le=5, description="Keep distilled pairs whose compressed score is at least this."
    )


class SelectConfig(Section):
    budget: int = Field(
        100, ge=1, description="Rows in the training set (the paper: 10,000 of 300,932)."
    )
    mixup_ratio: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Fraction of the budget taken from distilled pairs (paper: 0.3, 0.5, 0.7).",
    )
    long_tail_k: int = Field(
        15, ge=1, description="Neighbours for the long-tail (diversity) score."
    )
    seed: int = Field(42, description="Seed for shuffling the selection.")
    embedder: str = Field(
        DEFAULT_EMBEDDER, description="Sentence embedder for the long-tail score."
    )
    embed_device: DeviceName = EMBED_DEVICE
    per_task: bool = Field(
        False,
        description="Fill each side (distilled, original) per task_type, in proportion to the candidates' task-type shares (both sides together), each task's best first; a task short of rows gives its places to the others.",
        json_schema_extra=ADDED_LATER,
    )


class RunConfig(Section):
    """The whole pipeline: import -> rate -> split -> cluster -> distill -> re-rate -> select."""

    import_: ImportConfig = Field(
        default_factory=ImportConfig, alias="import", description="Stage 0: read the pool."
    )
    rate: RateConfig = Field(default_factory=RateConfig, description="Stage 1: rate the pool.")
    split: SplitConfig = Field(
        default_factory=SplitConfig, description="Split into high and low quality."
    )
    cluster: ClusterConfig = Field(
        default_factory=ClusterConfig, description="Cluster the low-quality part."
    )
    distill: DistillConfig = Field(
        default_factory=DistillConfig, description="Merge each cluster into one pair."
    )
    rerate: RerateConfig = Field(
        default_factory=RerateConfig, description="Re-rate distilled pairs with the judge."
    )
    select: SelectConfig = Field(
        default_factory=SelectConfig, description="Build the training set."
    )
    executor: ExecutorConfig = Field(
        default_factory=ExecutorConfig,
        description="Where the per-record stages run (the local process or a Ray cluster).",
    )
