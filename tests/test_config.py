"""Configuration: unknown keys named, overrides, a commented default that loads back."""

from __future__ import annotations

import sys

import pytest
import yaml

from lmmixup.config import ImportConfig, RunConfig, apply_overrides, load_config, to_yaml, validate
from lmmixup.errors import ConfigError


def test_unknown_keys_are_errors_that_name_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("select:\n  budjet: 10\n")
    with pytest.raises(ConfigError, match=r"unknown key 'select\.budjet'"):
        load_config(RunConfig, path)


def test_bad_values_are_named():
    with pytest.raises(
        ConfigError, match=r"'cluster'.*min_size \(9\) is larger than max_size \(3\)"
    ):
        validate(RunConfig, {"cluster": {"min_size": 9, "max_size": 3}})
    with pytest.raises(ConfigError, match=r"'select\.budget'"):
        validate(RunConfig, {"select": {"budget": -1}})


def test_overrides_parse_yaml_values(tmp_path):
    data = apply_overrides(
        {}, ["select.budget=50", "distill.generator.backend=openai", "import.sources=[gsm8k]"]
    )
    cfg = validate(RunConfig, data)
    assert cfg.select.budget == 50 and cfg.distill.generator.backend == "openai"
    assert cfg.import_.sources[0].path == "gsm8k"
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["novalue"])


def test_commented_default_config_round_trips():
    cfg = RunConfig(
        **{"import": ImportConfig(sources=["gsm8k", {"path": "sharegpt", "sample": 5}])}
    )
    text = to_yaml(cfg)
    assert "# Rows in the training set" in text
    assert validate(RunConfig, yaml.safe_load(text)) == cfg


def test_every_field_is_documented():
    def walk(model):
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"
            sub = info.annotation
            if isinstance(sub, type) and hasattr(sub, "model_fields"):
                walk(sub)

    walk(RunConfig)


def _run_config(tmp_path, data: dict):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_run_config_problems_are_named_one_line_each(tmp_path):
    from lmmixup.workflows.pipeline import load_run_config

    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "folder").mkdir()
    sources = [str(tmp_path / name) for name in ("none.jsonl", "empty.jsonl", "folder")]
    data = {"import": {"sources": [*sources, "gsm8k"]}, "rate": {"method": "knn"}}
    with pytest.raises(ConfigError) as error:
        load_run_config(_run_config(tmp_path, data), [])
    lines = str(error.value).splitlines()
    assert len(lines) == 4 and all(line.startswith(f"{tmp_path}/run.yaml: ") for line in lines)
    assert "import.sources[0].path: " in lines[0] and "none.jsonl does not exist" in lines[0]
    assert "import.sources[1].path: " in lines[1] and "empty.jsonl is empty" in lines[1]
    assert "import.sources[2].path: " in lines[2] and "not a saved dataset" in lines[2]
    assert "rate.library: rate.method knn needs a library folder" in lines[3]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, "import.sources: empty"),
        ({"import": {"sources": ["gsm8k"]}, "rate": {"method": "knn"}}, "rate.library: "),
        (
            {"import": {"sources": ["gsm8k"]}, "rate": {"method": "knn", "library": "nowhere"}},
            "rate.library: rate.method knn needs a library folder (got 'nowhere')",
        ),
        ({"import": {"sources": ["gsm8k"]}, "select": {"budget": 0}}, "'select.budget'"),
        (
            {
                "import": {"sources": ["gsm8k"]},
                "rate": {"mode": "logprob", "judge": {"backend": "vllm"}},
            },
            "rate.mode=logprob",
        ),
    ],
)
def test_config_check_refuses_what_cannot_work(tmp_path, monkeypatch, capsys, data, expected):
    from lmmixup.cli.app import main

    monkeypatch.setattr(
        sys, "argv", ["lmmixup", "config", "check", str(_run_config(tmp_path, data))]
    )
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    assert expected in capsys.readouterr().err


def test_a_config_that_can_work_is_ok(tmp_path):
    from lmmixup.workflows.pipeline import load_run_config

    (tmp_path / "pool.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')
    data = {
        "import": {"sources": [str(tmp_path / "pool.jsonl"), "gsm8k"]},
        "rate": {"mode": "generate", "judge": {"backend": "openai"}},
    }
    assert load_run_config(_run_config(tmp_path, data), []).rate.mode == "generate"
