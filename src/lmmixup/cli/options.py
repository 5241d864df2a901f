"""Options several commands share, declared once, and how flags become config overrides.

A command's own flags are `--set` overrides in disguise: `overrides(sets, key=value)` turns the
flags that were given into `KEY=VALUE` strings after the `--set` ones, so a flag wins over
`--set` and both win over `--config`. This module stays light (no pydantic): `lmmixup --help`
imports it.

One vocabulary: a flag that sets a config key is that key's name in kebab case (its last
segments: `--max-new-tokens` for `distill.max_new_tokens`, `--judge-model` for
`eval.judge.model`), and its help ends with `Config key: KEY.` (`keyed`). The exceptions are
the short aliases in `FLAG_ALIASES`; old spellings live on in `RENAMED_FLAGS` for a while
(tests/test_vocabulary.py checks every command).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from lmmixup.config import Section

FLAG_ALIASES = {"--no-embed": "mixture.embedder"}
"""Flags that set a config key under another name: `--no-embed` is `mixture.embedder=lexical`."""
RENAMED_FLAGS: dict[tuple[str, ...], dict[str, str]] = {
    ("cluster",): {"--all-sources": "--no-per-source"},
    ("eval", "distiller"): {"--judge": "--judge-model"},
    ("eval", "downstream"): {"--output": "--output-dir"},
}
"""Old flag spellings, per command, still accepted with a one-line notice."""
_GLOBAL_FLAGS = {"-v", "--verbose", "-q", "--quiet"}


def keyed(key: str, text: str) -> str:
    """The help of a flag that sets config key `key`: the text, then the key."""
    return f"{text} Config key: {key}."


def renamed_flags(argv: list[str]) -> list[str]:
    """`argv` with old flag spellings (`RENAMED_FLAGS`) replaced, a notice on stderr for each."""
    words = [arg for arg in argv if arg not in _GLOBAL_FLAGS]
    renames: dict[str, str] = {}
    for command, table in RENAMED_FLAGS.items():
        if tuple(words[: len(command)]) == command:
            renames |= table
    result = []
    for arg in argv:
        flag, sep, value = arg.partition("=")
        if flag in renames:
            typer.echo(f"note: {flag} is now {renames[flag]}; the old spelling will go", err=True)
            arg = renames[flag] + sep + value
        result.append(arg)
    return result


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
EmbedderOpt = Annotated[str | None, typer.Option(help="Sentence embedder [bundled:minilm].")]
FormatOpt = Annotated[
    str | None,
    typer.Option(
        "--format",
        help="jsonl | parquet | hf (a folder holding a saved Hugging Face dataset) "
        "[from the -o name: .jsonl, .parquet, else a folder].",
    ),
]
MessagesOpt = Annotated[
    bool,
    typer.Option(
        "--messages",
        help="Write TRL's conversational rows (`messages`: user, then assistant) instead of "
        "prompt/completion.",
    ),
]


def max_steps_opt(key: str) -> Any:
    """--max-steps for the training section `key` names."""
    return Annotated[
        int | None, typer.Option(help=keyed(key, "Stop after this many optimizer steps."))
    ]


def embedder_opt(key: str) -> Any:
    """--embedder for the config key `key`."""
    return Annotated[
        str | None, typer.Option(help=keyed(key, "Sentence embedder [bundled:minilm]."))
    ]


def base_url_opt(key: str) -> Any:
    """--base-url (or a renamed flag) for the config key `key`."""
    return Annotated[str | None, typer.Option(help=keyed(key, "openai backend: server URL."))]


def concurrency_opt(key: str) -> Any:
    """--concurrency for the config key `key` (a server backend's requests in flight)."""
    return Annotated[
        int | None,
        typer.Option(
            help=keyed(key, "openai backend: requests kept in flight (each record's own call).")
        ),
    ]


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


def backend_opt(who: str, key: str) -> Any:
    """--backend (or a renamed flag) for the model `who` names, config key `key`."""
    return Annotated[str | None, typer.Option(help=keyed(key, f"{who}: hf | openai | vllm."))]


def model_opt(who: str, key: str) -> Any:
    """--model (or a renamed flag) for the model `who` names, config key `key`."""
    return Annotated[
        str | None,
        typer.Option(help=keyed(key, f"{who}: path, bundled name, or server model name.")),
    ]


def in_section(section: str, **flags: object) -> dict[str, object]:
    """Flags that set keys of a nested section, e.g. `judge.model`."""
    return {f"{section}.{key}": value for key, value in flags.items()}


def overrides(sets: list[str] | None, **flags: object) -> list[str]:
    """Dotted overrides from --set plus the command's own flags that were given."""
    given = [f"{key}={json.dumps(value)}" for key, value in flags.items() if value is not None]
    return list(sets or []) + given


def load_section(model: type[Section], path: Path | None, section: str, changes: list[str]):
    """The command's config: the YAML's `section:` mapping when it has one, else the whole file;
    an override may name its key with or without the `section.` prefix.

    One file (e.g. `lmmixup train distiller --show-config`'s recipe) can so configure several
    commands.
    """
    from lmmixup.config import apply_overrides, load_yaml, validate

    data = load_yaml(path) if path else {}
    if isinstance(data.get(section), dict):
        data = data[section]
    # `--set distill.max_new_tokens=64` names the key as a run config does
    apply_overrides(data, [change.removeprefix(f"{section}.") for change in changes])
    origin = f"{path} ({section})" if path else section
    return validate(model, data, origin)
