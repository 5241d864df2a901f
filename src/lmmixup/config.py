"""Configuration: one pydantic model per stage, YAML in and out, dotted CLI overrides.

Every field has a description; `lmmixup config init` writes them as comments, so the default
config documents itself. Unknown keys are errors that name the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from lmmixup.errors import ConfigError

DEFAULT_LM = "bundled:smollm2-135m-instruct"
DEFAULT_EMBEDDER = "bundled:minilm"
# Keys that change how a stage runs but not what it produces: a resumed stage may change them.
OPERATIONAL = {"operational": True}


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class SourceSpec(Section):
    path: str = Field(
        description="A file (JSONL, JSON, Parquet, CSV), a saved HF dataset dir, or a built-in source: sharegpt, gsm8k."
    )
    sample: int | None = Field(
        None,
        ge=1,
        description="Keep a seeded random sample of this many rows from this source (after filtering).",
    )

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
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto",
        description="hf backend: weights dtype; auto = bfloat16 where the CPU/GPU supports it.",
    )
    batch_size: int = Field(
        16,
        ge=1,
        description="hf backend: prompts per forward/generate call.",
        json_schema_extra=OPERATIONAL,
    )


class RateConfig(Section):
    judge: BackendConfig = Field(default_factory=BackendConfig, description="The judge model.")
    mode: Literal["auto", "logprob", "generate"] = Field(
        "auto",
        validate_default=True,
        description="logprob (hf judges only) reads the probability of each score 1..10 in one forward pass; generate lets the model write the JSON; auto = logprob for an hf judge, generate for a server. Recorded as resolved.",
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
    k: int = Field(16, ge=1, description="kNN-Bayes: neighbours used to score a sample.")
    search: Literal["auto", "exact", "ivf"] = Field(
        "auto",
        description="kNN-Bayes neighbour search: exact (SPEC), ivf (approximate, ~4x faster on large libraries; 99.9% same mode in our benchmark), or auto (exact below 20,000 library items, ivf from there).",
    )
    k_transition: int = Field(
        3, ge=1, description="kNN-Bayes: neighbours used to estimate the transition matrix."
    )
    seed: int = Field(0, description="Seed for choosing the judged fraction.")

    @field_validator("mode")
    @classmethod
    def _mode_for_backend(cls, mode: str, info: ValidationInfo) -> str:
        """Resolve `auto` for the judge's backend; refuse logprob without an hf judge.

        Raises ConfigError itself (pydantic passes it through), so that code building a
        RateConfig directly gets the same one-line error as a config file.
        """
        judge = info.data.get("judge")
        if judge is None:  # the judge section is invalid: pydantic reports that
            return mode
        if mode == "auto":
            return "logprob" if judge.backend == "hf" else "generate"
        if mode == "logprob" and judge.backend != "hf":
            raise ConfigError(
                f"rate.mode=logprob reads token probabilities, which only judge.backend=hf gives "
                f"(got {judge.backend}); leave the mode out or use --mode generate"
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
    max_copy_overlap: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Faithfulness: drop a distillation whose answer repeats one member this closely (word-level similarity).",
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


def result_config(section: Section) -> dict:
    """The section as JSON without operational keys: what a stage's fingerprint is built from."""
    data = section.model_dump(mode="json", by_alias=True)
    for name, info in type(section).model_fields.items():
        key = info.alias or name
        value = getattr(section, name)
        if (info.json_schema_extra or {}).get("operational"):
            data.pop(key)
        elif isinstance(value, Section):
            data[key] = result_config(value)
    return data


def _format_errors(error: ValidationError, origin: str) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown key '{where}'")
        else:
            parts.append(f"'{where}': {item['msg']}")
    return f"{origin}: " + "; ".join(parts)


def validate(model: type[Section], data: dict, origin: str = "config") -> Section:
    """Build a config section, turning pydantic's errors into one readable ConfigError."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, origin)) from None


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping (an empty file is an empty mapping)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. select.budget=500")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{part}' is not a section")
        node[leaf] = yaml.safe_load(raw)
    return data


def load_config(
    model: type[Section], path: str | Path | None, overrides: list[str] = ()
) -> Section:
    """A config section from an optional YAML file plus dotted overrides."""
    data = load_yaml(path) if path else {}
    apply_overrides(data, list(overrides))
    return validate(model, data, str(path) if path else "config")


def to_yaml(config: Section) -> str:
    """YAML for a config with every field's description as a comment above it."""
    lines: list[str] = []
    _emit(config, 0, lines)
    return "\n".join(lines) + "\n"


def _emit(section: Section, indent: int, lines: list[str]) -> None:
    pad = "  " * indent
    for name, info in type(section).model_fields.items():
        key = info.alias or name
        value = getattr(section, name)
        if info.description:
            lines.append(f"{pad}# {info.description}")
        if isinstance(value, Section):
            lines.append(f"{pad}{key}:")
            _emit(value, indent + 1, lines)
            continue
        dumped = value.model_dump() if isinstance(value, BaseModel) else value
        if isinstance(dumped, list):
            dumped = [
                v.model_dump(exclude_none=True) if isinstance(v, BaseModel) else v for v in dumped
            ]
        text = yaml.safe_dump(dumped, default_flow_style=True, sort_keys=False).strip()
        text = text.removesuffix("\n...").removesuffix("...").strip()
        lines.append(f"{pad}{key}: {text}")
