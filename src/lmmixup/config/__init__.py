"""Configuration: one pydantic section per stage, YAML in and out, dotted CLI overrides.

Every field has a description; `lmmixup config init` writes them as comments, so the default
config documents itself. Unknown keys are errors that name the key. `config.base` holds the
machinery, `config.sections` the sections; both are imported from here.
"""

from lmmixup.config.base import (
    ADDED_LATER,
    DEFAULT_EMBEDDER,
    DEFAULT_LM,
    OPERATIONAL,
    Section,
    apply_overrides,
    load_config,
    load_yaml,
    result_config,
    to_yaml,
    validate,
)
from lmmixup.config.executor import ExecutorConfig
from lmmixup.config.sections import (
    BackendConfig,
    ClusterConfig,
    DistillConfig,
    ImportConfig,
    RateConfig,
    RerateConfig,
    RunConfig,
    SelectConfig,
    SourceSpec,
    SplitConfig,
)

__all__ = [
    "ADDED_LATER",
    "BackendConfig",
    "ClusterConfig",
    "DEFAULT_EMBEDDER",
    "DEFAULT_LM",
    "DistillConfig",
    "ExecutorConfig",
    "ImportConfig",
    "OPERATIONAL",
    "RateConfig",
    "RerateConfig",
    "RunConfig",
    "Section",
    "SelectConfig",
    "SourceSpec",
    "SplitConfig",
    "apply_overrides",
    "load_config",
    "load_yaml",
    "result_config",
    "to_yaml",
    "validate",
]
