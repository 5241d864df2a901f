"""Configuration: unknown keys named, overrides, a commented default that loads back."""

from __future__ import annotations

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
