"""One vocabulary: every flag that sets a config value is that key's name in kebab case (or a
documented alias), names the key in its help, and gives the same config as `--set` or a file."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

import pytest
import typer
from pydantic import BaseModel
from typer.testing import CliRunner

from lmmixup.cli.app import app
from lmmixup.cli.options import FLAG_ALIASES, RENAMED_FLAGS, renamed_flags
from lmmixup.config import RunConfig
from lmmixup.evaluation.distiller import EvalDistillerConfig
from lmmixup.evaluation.downstream import DownstreamConfig
from lmmixup.mixture import MixtureConfig
from lmmixup.training.finetune import FinetuneConfig
from lmmixup.training.grpo import GRPOTrainConfig
from lmmixup.training.sft import SFTTrainConfig

KEY = re.compile(r"Config key: ([a-z_]+(?:\.[a-z_]+)+)\.$")
SECTIONS: dict[str, type[BaseModel]] = {
    **{(info.alias or name): info.annotation for name, info in RunConfig.model_fields.items()},
    "mixture": MixtureConfig,
    "sft": SFTTrainConfig,
    "grpo": GRPOTrainConfig,
    "finetune": FinetuneConfig,
    "eval": EvalDistillerConfig,
    "downstream": DownstreamConfig,
}
"""Config sections by the name a recipe or run config gives them (the key's first segment)."""


def _commands(group, path: tuple[str, ...] = ()):
    """(path, command) for every command under `group`, however deep (typer's own click)."""
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


COMMANDS = list(_commands(typer.main.get_command(app)))


def _model_of(annotation: object) -> type[BaseModel] | None:
    """The pydantic model a field holds (also inside `X | None`), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(filter(None, map(_model_of, typing.get_args(annotation))), None)
    return None


def _has_key(key: str) -> bool:
    section, *path = key.split(".")
    model = SECTIONS.get(section)
    for depth, part in enumerate(path, 1):
        if model is None or part not in model.model_fields:
            return False
        if depth < len(path):
            model = _model_of(model.model_fields[part].annotation)
    return bool(path)


def _spellings(key: str) -> set[str]:
    """The flags that may set `key`: its last segments in kebab case (`--judge-model`)."""
    parts = [part.replace("_", "-") for part in key.split(".")]
    return {"--" + "-".join(parts[i:]) for i in range(len(parts))}


def _options(command) -> list:
    return [param for param in command.params if param.param_type_name == "option"]


def _keyed(command) -> list[tuple[object, str]]:
    """(option, the key its help names) for the command's options that name one."""
    return [
        (option, match.group(1))
        for option in _options(command)
        if (match := KEY.search(option.help or ""))
    ]


def test_the_walk_finds_the_commands():
    paths = {" ".join(path) for path, _ in COMMANDS}
    assert {"rate", "distill", "data import", "eval downstream", "train sft"} <= paths
    assert sum(len(_keyed(command)) for _, command in COMMANDS) > 60


@pytest.mark.parametrize("path, command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_config_flag_is_its_key_in_kebab_case(path, command):
    problems = []
    keyed = _keyed(command)
    for option, key in keyed:
        if not _has_key(key):
            problems.append(f"{option.opts}: its help names {key}, which is no config key")
        for flag in (f for f in option.opts if f.startswith("--")):
            if flag not in _spellings(key) and FLAG_ALIASES.get(flag) != key:
                problems.append(f"{flag} sets {key}: spell it {sorted(_spellings(key))[-1]}")
        for flag in option.secondary_opts:
            if flag.removeprefix("--no") not in {s.removeprefix("-") for s in option.opts}:
                problems.append(f"{flag}: the negative of {option.opts[0]} is --no-...")
    # a flag spelled like a key of the sections this command sets must say it is that key
    sections = {SECTIONS[key.split(".")[0]] for _, key in keyed if key.split(".")[0] in SECTIONS}
    fields = {name for model in sections for name in model.model_fields}
    problems += [
        f"{param.opts}: spelled like a config key but its help names none"
        for param in _options(command)
        if param.name in fields and param not in [option for option, _ in keyed]
    ]
    assert not problems, f"lmmixup {' '.join(path)}: " + "; ".join(problems)


def test_the_checks_catch_a_wrong_spelling():
    assert not _has_key("distill.max_tokens") and _has_key("distill.generator.model")
    assert _has_key("mixture.degrader.base_url") and not _has_key("nosuch.key")
    assert "--max-new-tokens" in _spellings("distill.max_new_tokens")
    assert "--judge" not in _spellings("eval.judge.model")


def test_renamed_flags_still_work_with_a_notice(capsys):
    assert renamed_flags(["-v", "eval", "distiller", "m", "--judge=x", "--output", "o"]) == [
        "-v",
        "eval",
        "distiller",
        "m",
        "--judge-model=x",
        "--output",
        "o",
    ]
    assert "--judge is now --judge-model" in capsys.readouterr().err
    assert renamed_flags(["rate", "--output", "o"]) == ["rate", "--output", "o"]
    new_flags = {
        flag for command, table in RENAMED_FLAGS.items() for flag in table.values() if command
    }
    spelled = {flag for _, command in COMMANDS for p in command.params for flag in p.opts}
    spelled |= {
        flag for _, command in COMMANDS for p in command.params for flag in p.secondary_opts
    }
    assert new_flags <= spelled


class _Resolved(Exception):
    """Raised by the patched config loader once the command's config is resolved."""


@pytest.fixture
def resolved(monkeypatch):
    """The config a stage command resolves, without running the stage."""
    import lmmixup.cli.commands.stages as stages
    from lmmixup.cli.options import load_section

    def capture(*args, **kwargs):
        raise _Resolved(load_section(*args, **kwargs))

    monkeypatch.setattr(stages, "load_section", capture)

    def run(*args: str):
        result = CliRunner().invoke(app, list(args))
        assert isinstance(result.exception, _Resolved), result.output
        return result.exception.args[0]

    return run


def test_a_flag_and_its_key_give_the_same_config(resolved, tmp_path: Path):
    (tmp_path / "run.yaml").write_text("distill:\n  max_new_tokens: 64\n  temperature: 0.5\n")
    distill = ["distill", "c.jsonl", "--pool", "p.jsonl", "-o", str(tmp_path / "d.jsonl")]
    by_flag = resolved(*distill, "--max-new-tokens", "64", "--temperature", "0.5")
    by_set = resolved(*distill, "--set", "distill.max_new_tokens=64", "--set", "temperature=0.5")
    by_file = resolved(*distill, "-c", str(tmp_path / "run.yaml"))
    assert by_flag == by_set == by_file
    assert by_flag.max_new_tokens == 64 and by_flag != resolved(*distill)

    rate = ["rate", "pool.jsonl", "-o", str(tmp_path / "r.jsonl")]
    assert resolved(*rate, "--model", "m", "--no-curate") == resolved(
        *rate, "--set", "rate.judge.model=m", "--set", "curate=false"
    )
    cluster = ["cluster", "low.jsonl", "-o", str(tmp_path / "c.jsonl")]
    assert resolved(*cluster, "--per-source").per_source
    assert not resolved(*cluster, "--no-per-source").per_source
