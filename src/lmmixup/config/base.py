"""The configuration's machinery: the `Section` base, YAML in and out, dotted overrides, and
what a stage's fingerprint is built from. The sections themselves are in `config.sections`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
)

from lmmixup.errors import ConfigError

DEFAULT_LM = "bundled:smollm2-135m-instruct"
DEFAULT_EMBEDDER = "bundled:minilm"
# Keys that change how a stage runs but not what it produces: a resumed stage may change them.
OPERATIONAL = {"operational": True}
# Keys added after run dirs were recorded: left out of a stage's fingerprint while at their
# default, so an existing run dir is not refused; any other value is recorded (and redoes).
ADDED_LATER = {"omit_default": True}

# Where models run (embedders, hf backends), and the batch a vllm backend gets per call.
DeviceName = Literal["auto", "cpu", "cuda", "mps"]
DEVICE_HELP = (
    "auto = a CUDA GPU when torch sees one, else Apple MPS, else the CPU; or cpu, cuda, mps."
)
EMBED_DEVICE = Field(
    "auto",
    description=f"Where the sentence embedder runs: {DEVICE_HELP}",
    json_schema_extra=OPERATIONAL,
)
VLLM_BATCH = 1024


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


def result_config(section: Section) -> dict:
    """The section as JSON without operational keys: what a stage's fingerprint is built from."""
    data = section.model_dump(mode="json", by_alias=True)
    for name, info in type(section).model_fields.items():
        key = info.alias or name
        value = getattr(section, name)
        extra = info.json_schema_extra or {}
        if extra.get("operational") or (
            extra.get("omit_default") and value == info.get_default(call_default_factory=True)
        ):
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
