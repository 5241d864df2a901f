"""`lmmixup config init` writes the method's defaults; `config check` checks what a config means."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmmixup.config import RunConfig, load_yaml, validate
from lmmixup.io.jsonl import write_records
from lmmixup.workflows.config_check import check_meaning, pool_size


def _cli(*args, cwd):
    command = [sys.executable, "-m", "lmmixup.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, check=False, cwd=cwd)


def _findings(data: dict) -> dict[str, str]:
    """{key: level} of the findings for a run config given as a mapping."""
    return {f.key: f.level for f in check_meaning(validate(RunConfig, data))}


GOOD = {"import": {"sources": [{"path": "gsm8k", "sample": 400}]}, "select": {"budget": 100}}


def test_a_sound_config_has_no_findings():
    assert _findings(GOOD) == {}


@pytest.mark.parametrize(
    "change, key, level",
    [
        ({"import": {"sources": ["nothere.jsonl"]}}, "import.sources[0].path", "error"),
        (
            {"rate": {"judge": {"backend": "openai", "base_url": "http://x"}}},
            "rate.judge.model",
            "error",
        ),
        (
            {"rate": {"judge": {"backend": "openai", "model": "m"}}},
            "rate.judge.base_url",
            "warning",
        ),
        ({"distill": {"generator": {"model": "bundled:nope"}}}, "distill.generator.model", "error"),
        (
            {"distill": {"generator": {"model": "./no/such/dir"}}},
            "distill.generator.model",
            "error",
        ),
        ({"cluster": {"embedder": "bundled:nope"}}, "cluster.embedder", "error"),
        (
            {"distill": {"generator": {"base_url": "http://x"}}},
            "distill.generator.base_url",
            "warning",
        ),
        (
            {"import": {"min_prompt_chars": 50, "max_prompt_chars": 10}},
            "import.min_prompt_chars",
            "error",
        ),
        ({"cluster": {"mean_size": 40}}, "cluster.mean_size", "warning"),
        ({"split": {"high_fraction": 0.2, "threshold": 3}}, "split.threshold", "warning"),
        ({"select": {"budget": 401}}, "select.budget", "error"),
        ({"select": {"budget": 300, "mixup_ratio": 0.9}}, "select.mixup_ratio", "warning"),
    ],
)
def test_each_problem_names_its_key(change, key, level):
    data = {section: dict(values) for section, values in GOOD.items()}
    for section, values in change.items():
        data[section] = data.get(section, {}) | values
    assert _findings(data) == {key: level}


def test_a_logprob_judge_behind_a_server_is_not_refused_here():
    """Whether a backend can give logprobs is the rate section's to say (openai can)."""
    found = check_meaning(validate(RunConfig, GOOD | {"rate": {"mode": "generate"}}))
    assert not [f for f in found if f.key == "rate.mode"]


def test_the_pool_size_comes_from_samples_counts_and_caps(tmp_path):
    write_records(tmp_path / "a.jsonl", [{"prompt": "p", "completion": "c"}] * 30)
    sources = {"sources": [str(tmp_path / "a.jsonl"), {"path": "gsm8k", "sample": 20}]}
    assert pool_size(validate(RunConfig, {"import": sources})) == 50
    capped = sources | {"sample": 40, "holdout_fraction": 0.25}
    assert pool_size(validate(RunConfig, {"import": capped})) == 30
    (tmp_path / "b.csv").write_text("prompt,completion\np,c\n")
    assert (
        pool_size(validate(RunConfig, {"import": {"sources": [str(tmp_path / "b.csv")]}})) is None
    )


def test_init_writes_the_defaults_and_check_exits_by_level(tmp_path):
    assert _cli("config", "init", "-o", "method.yaml", cwd=tmp_path).returncode == 0
    written = validate(RunConfig, load_yaml(tmp_path / "method.yaml"))
    assert written == RunConfig()  # the method's defaults: no demo length filter
    assert written.import_.max_prompt_chars is None and written.cluster.max_size == 25
    empty = _cli("config", "check", "method.yaml", cwd=tmp_path)
    assert empty.returncode == 2 and "error: import.sources: empty" in empty.stderr
    assert _cli("config", "init", "-o", "demo.yaml", "--demo", cwd=tmp_path).returncode == 0
    assert validate(RunConfig, load_yaml(tmp_path / "demo.yaml")).import_.max_prompt_chars == 400
    (tmp_path / "warn.yaml").write_text(
        "import: {sources: [{path: gsm8k, sample: 40}]}\nselect: {budget: 20}\n"
        "cluster: {mean_size: 40}\n"
    )
    warned = _cli("config", "check", "warn.yaml", cwd=tmp_path)
    assert warned.returncode == 0, warned.stderr
    assert warned.stderr.strip() == (
        "warn.yaml: warning: cluster.mean_size: 40.0 is outside [cluster.min_size, "
        "cluster.max_size] = [2, 25]: most drawn sizes are clipped to a bound; set it between them"
    )
    assert "1 warning" in warned.stdout
