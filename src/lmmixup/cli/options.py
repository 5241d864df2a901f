"""Options several commands share, declared once, and how flags become config overrides.

A command's own flags are `--set` overrides in disguise: `overrides(sets, key=value)` turns the
flags that were given into `KEY=VALUE` strings after the `--set` ones, so a flag wins over
`--set` and both win over `--config`. This module stays light (no pydantic): `lmmixup --help`
imports it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from lmmixup.config import Section

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML file with this command's keys.")
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config key: KEY=VALUE (repeatable).")
]
ForceOpt = Annotated[
    bool,
    typer.Option(help="Redo from scratch when the config or inputs changed, instead of refusing."),
]
ForceStagesOpt = Annotated[
    bool, typer.Option(help="Redo stages whose config or inputs changed, instead of refusing.")
]
MaxStepsOpt = Annotated[int | None, typer.Option(help="Stop after this many optimizer steps.")]
EmbedderOpt = Annotated[str | None, typer.Option(help="Sentence embedder [bundled:minilm].")]
BaseUrlOpt = Annotated[str | None, typer.Option(help="openai backend: server URL.")]


def section_config_opt(section: str) -> Any:
    """--config/-c for a command that reads its keys from a file's top level or `section:`."""
    article = "an" if section[0] in "aeiou" else "a"
    return Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help=f"YAML with this command's keys (or {article} `{section}:` section).",
        ),
    ]


def backend_opt(who: str) -> Any:
    """--backend (or a renamed flag) for the model `who` names."""
    return Annotated[str | None, typer.Option(help=f"{who}: hf | openai.")]


def model_opt(who: str) -> Any:
    """--model (or a renamed flag) for the model `who` names."""
    return Annotated[
        str | None, typer.Option(help=f"{who}: path, bundled name, or server model name.")
    ]


JudgeBackendOpt = backend_opt("Judge backend")


def in_section(section: str, **flags: object) -> dict[str, object]:
    """Flags that set keys of a nested section, e.g. `judge.model`."""
    return {f"{section}.{key}": value for key, value in flags.items()}


def overrides(sets: list[str] | None, **flags: object) -> list[str]:
    """Dotted overrides from --set plus the command's own flags that were given."""
    given = [f"{key}={json.dumps(value)}" for key, value in flags.items() if value is not None]
    return list(sets or []) + given


def load_section(model: type[Section], path: Path | None, section: str, changes: list[str]):
    """The command's config: the YAML's `section:` mapping when it has one, else the whole file.

    One file (e.g. `lmmixup train distiller --show-config`'s recipe) can so configure several
    commands.
    """
    from lmmixup.config import apply_overrides, load_yaml, validate

    data = load_yaml(path) if path else {}
    if isinstance(data.get(section), dict):
        data = data[section]
    apply_overrides(data, changes)
    origin = f"{path} ({section})" if path else section
    return validate(model, data, origin)
